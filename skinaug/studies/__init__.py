"""Studies: experiments that train models and then score them (`score benefit`, `score sweep`).

They sit above both the trainers and `skinaug.scores`, so that scoring itself never depends on a trainer."""
