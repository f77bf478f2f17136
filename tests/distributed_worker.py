"""Run under torchrun (or plainly, as one process) by tests/test_distributed.py.

A few VQ-VAE training steps on fixed random images with a fixed global batch, through the same pieces the
trainer uses (Distributed.wrap, the all-reduced EMA quantizer). Rank 0 writes, as JSON: the global loss per
step, a hash of every rank's weights and buffers, and its final weights as a list per tensor.
"""

import hashlib
import json
import os
import sys

import numpy as np
import torch

from skinaug.distributed import Distributed
from skinaug.vqvae.model import VQVAE2, VQVAEConfig, vqvae_loss

GLOBAL_BATCH, STEPS = 8, 3


def main(out_path: str) -> None:
    dist = Distributed.from_environment("cpu")
    torch.manual_seed(0)
    config = VQVAEConfig(image_size=32, channels=16, res_channels=8, n_res_blocks=1, codebook_size=16, code_dim=4)
    model = VQVAE2(config)
    for quantizer in model.quantizers.values():
        # a fixed codebook: the data-dependent initialisation would draw from rank 0's half batch only
        quantizer.codebook.copy_(torch.randn(16, 4) * 0.1)
        quantizer.code_sum.copy_(quantizer.codebook)
        quantizer.cluster_size.fill_(1.0)
        quantizer.initialised.fill_(True)
    network = dist.wrap(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.rand(STEPS, GLOBAL_BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    losses = []
    for step in range(STEPS):
        batch = images[step][dist.shard(np.arange(GLOBAL_BATCH))]
        loss, _ = vqvae_loss(network(batch), batch, config.commitment_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        global_loss = loss.detach().clone()
        if dist.enabled:
            torch.distributed.all_reduce(global_loss)
            global_loss /= dist.world_size
        losses.append(global_loss.item())
    state = model.state_dict()
    digest = hashlib.sha256(b"".join(state[k].contiguous().numpy().tobytes() for k in sorted(state))).hexdigest()
    hashes = dist.all_gather_objects(digest)
    if dist.is_main:
        with open(out_path, "w") as handle:
            json.dump({"losses": losses, "hashes": hashes, "world_size": dist.world_size,
                       "state": {k: v.double().reshape(-1).tolist() for k, v in state.items()}}, handle)
    # every rank done (rank 0 has written) before any leaves; then out without C++ teardown: tearing gloo down
    # (destroy_process_group, or the interpreter's exit) aborts a rank now and then on a busy CPU ("terminate
    # called without an active exception"), after all the work is done
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
