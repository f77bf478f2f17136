"""Scores that judge a model and the datasets it generates: `skinaug score ...`.

- `cas`: the classification accuracy score (train a classifier on a generated set, AUC on real test images)
- `code_usage`: the paper's Table 2 columns for a code file, and `sweep` over codebook size and code dimension
- `fid`: Fréchet distance in Inception or classifier features, with k-NN precision and recall
- `memorization`: each generated image's nearest real image, near-copies flagged

The classifier they share lives in `classifier`, the image sets they read in `sets`, ROC/AUC in `roc`.
"""
