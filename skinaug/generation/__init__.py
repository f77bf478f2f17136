"""Writing generated datasets: `sampler` (the Sampler protocol and the option objects passed per call), `commands`
(the VQ-VAE-2 generator, plans, the one batch loop, and mix / resample / synthesize / augment as functions),
`baseline_sampler` (the baselines as a Sampler), `iterative` (iterative resampling's boxes), `encode_decode`
(images to codes and back)."""
