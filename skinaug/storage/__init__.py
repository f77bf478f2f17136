"""Files on disk, torch-free: `fs` (atomic writes, the output claim and lock), `writer` (a generated dataset, written
batch by batch and resumable), `codefile` (CODES.h5), `modeldir` (a model directory), `trained_on` (provenance),
`image_cache` (decoded training images)."""
