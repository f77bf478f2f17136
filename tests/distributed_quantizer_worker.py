"""Run under torchrun by tests/test_distributed.py: two ranks holding different data train one quantizer.

The data-dependent initialisation and the dead-code restarts draw rows on rank 0 and broadcast them, and the EMA
update all-reduces counts and sums: every rank must end with the same codebook. Rank 0 writes, as JSON, each
rank's hash of the quantizer buffers, how many codes were restarted, and whether the first codebook rows are rank
0's own first-batch vectors.
"""

import hashlib
import json
import os
import sys

import torch

from skinaug.distributed import Distributed
from skinaug.vqvae.quantize import VectorQuantizer


class RecordingQuantizer(VectorQuantizer):
    """Keeps the codebook the data-dependent initialisation made (the same forward then updates it)."""

    def _initialise(self, vectors):
        super()._initialise(vectors)
        self.initial = self.codebook.clone()


def main(out_path: str) -> None:
    dist = Distributed.from_environment("cpu")
    torch.manual_seed(100 + dist.rank)  # each rank its own data and its own random stream
    quantizer = RecordingQuantizer(codebook_size=16, code_dim=4, restart_after=2).train()
    batches = [torch.randn(2, 4, 3, 3) * (1 + dist.rank) + 3 * dist.rank for _ in range(6)]
    first_vectors = batches[0].permute(0, 2, 3, 1).reshape(-1, 4)
    for batch in batches:
        quantizer(batch)
    from_rank0 = bool((quantizer.initial[:, None, :] == first_vectors[None, :, :]).all(-1).any(-1).all())
    state = quantizer.state_dict()
    digest = hashlib.sha256(b"".join(state[k].contiguous().numpy().tobytes() for k in sorted(state))).hexdigest()
    gathered = dist.all_gather_objects({"hash": digest, "restarted": quantizer.restarted_total, "initial_from_mine": from_rank0})
    if dist.is_main:
        with open(out_path, "w") as handle:
            json.dump(gathered, handle)
    # every rank done (rank 0 has written) before any leaves; then out without C++ teardown: tearing gloo down
    # (destroy_process_group, or the interpreter's exit) aborts a rank now and then on a busy CPU ("terminate
    # called without an active exception"), after all the work is done
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
