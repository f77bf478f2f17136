"""The training toolkit (skinaug.training): fit's exact arithmetic with the schedule, the finite-loss guard, exact
resume across two optimizers, the checkpoint's layout, the metrics log, and the per-epoch batches."""

import json
import math

import numpy as np
import pytest
import torch

from skinaug.distributed import Distributed
from skinaug.errors import SkinaugError
from skinaug.training.loop import (Diverged, Group, Hooks, MetricsLog, Run, TrainState, fit, load_checkpoint, lr_factor,
                              optimizer_step, shuffled_batches, steps_per_epoch, warmup_cosine)


def linear_model(start: float = 1.0) -> torch.nn.Module:
    """One parameter w; the toy loss GRADIENT * w has the known gradient GRADIENT."""
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(start)
    return model


GRADIENT = 2.0


def test_fit_applies_the_warmup_cosine_schedule_step_by_step():
    model = linear_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = TrainState(model=model, optimizer=optimizer, scheduler=warmup_cosine(optimizer, 1, 8))
    seen, weights = [], []

    def step(batch, steps_done):
        seen.append((batch, steps_done))
        loss = GRADIENT * model.weight.sum()
        optimizer_step(loss, optimizer)
        weights.append(model.weight.item())
        return {"loss": loss.detach(), "batches": 1}

    epochs_seen = []

    def evaluate(epoch):
        epochs_seen.append((epoch.number, epoch.step, epoch.steps, epoch.items))
        return {"loss_mean": epoch.mean("loss"), "batches": epoch.sums["batches"]}

    def batches(epoch):
        return [[epoch, number] for number in range(4)]  # two items a batch

    metrics = fit(state, step, batches, epochs=2, hooks=Hooks(evaluate=evaluate))

    assert seen == [([epoch, number], 4 * epoch + number) for epoch in range(2) for number in range(4)]
    assert epochs_seen == [(1, 4, 4, 8), (2, 8, 4, 8)]
    # 1 warm-up step (a tenth of 8, plus 1) at the full rate, then a cosine from step 1 to 0 at step 8
    factors = [1.0] + [0.5 * (1 + math.cos(math.pi * (t - 1) / 7)) for t in range(1, 8)]
    expected = np.cumsum([-0.1 * GRADIENT * f for f in factors]) + 1.0
    np.testing.assert_allclose(weights, expected, rtol=0, atol=1e-6)
    assert state.step == 8 and state.epoch == 2
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # the schedule ends at 0
    assert metrics["epoch"] == 2 and metrics["step"] == 8 and metrics["batches"] == 4
    assert metrics["loss_mean"] == pytest.approx(GRADIENT * np.mean(expected[3:7]), abs=1e-6)  # losses before steps 5-8


@pytest.mark.parametrize("checkpointed", [False, True])
def test_a_nan_loss_stops_with_one_line_naming_the_epoch_step_and_what_to_do(tmp_path, checkpointed):
    model = linear_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = TrainState(model=model, optimizer=optimizer)
    poisoned_at = 6 if checkpointed else 3  # the second step of epoch 2, or the third of epoch 1

    def step(batch, steps_done):
        loss = GRADIENT * model.weight.sum() * (float("nan") if steps_done + 1 == poisoned_at else 1.0)
        optimizer_step(loss, optimizer)
        return {"loss": loss.detach()}

    checkpoint = tmp_path / "train" / "checkpoint.pt"
    checkpoint.parent.mkdir()
    run = Run("toy training", checkpoint=checkpoint)
    with pytest.raises(Diverged) as caught:
        fit(state, step, lambda epoch: range(4), epochs=3, run=run)
    message = str(caught.value)
    assert "\n" not in message and isinstance(caught.value, SkinaugError)
    if checkpointed:
        assert message == (f"toy training diverged: the loss became nan at epoch 2, step 6; the last good checkpoint is "
                           f"kept in {checkpoint.parent} (resume with resume=True after lowering lr)")
        assert load_checkpoint(checkpoint)["epoch"] == 1  # epoch 1's checkpoint, never the diverged state
    else:
        assert message == ("toy training diverged: the loss became nan at epoch 1, step 3; no checkpoint was saved yet "
                           "(start again with a lower lr)")
        assert not checkpoint.exists()


class Crash(Exception):
    pass


def assert_same(actual, expected, where="state"):
    """Nested state dicts equal bit for bit: tensors with torch.equal, everything else with ==."""
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for index, (left, right) in enumerate(zip(actual, expected)):
            assert_same(left, right, f"{where}[{index}]")
    elif isinstance(expected, torch.Tensor):
        assert expected.dtype == actual.dtype and torch.equal(actual, expected), where
    else:
        assert actual == expected, where


def adversarial_toy(weights_seed: int, run_seed: int = 4):
    """Two models and two optimizers stepped in one step (as a GAN's generator and discriminator), random draws in
    every step, a schedule on one optimizer only: everything a resume has to restore. `run_seed` orders the data
    (a trainer takes it from the checkpoint's meta)."""
    torch.manual_seed(weights_seed)
    generator, critic = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)
    generator_optimizer = torch.optim.AdamW(generator.parameters(), lr=0.05)
    critic_optimizer = torch.optim.AdamW(critic.parameters(), lr=0.01, betas=(0.5, 0.9))
    state = TrainState(generator=generator, critic=critic, generator_optimizer=generator_optimizer,
                       critic_optimizer=critic_optimizer,
                       scheduler=warmup_cosine(generator_optimizer, warmup_steps=2, total_steps=12))
    data = torch.linspace(-1, 1, 30).view(10, 3)

    def step(indices, steps_done):
        noise = torch.randn(len(indices), 3) * 0.1  # the global random stream: restored from the checkpoint
        fake = generator(data[torch.as_tensor(indices)] + noise)
        critic_loss = critic(fake.detach()).mean() - critic(torch.ones_like(fake)).mean()
        optimizer_step(critic_loss, critic_optimizer)
        generator_loss = -critic(fake).mean()
        optimizer_step(generator_loss, generator_optimizer)
        return {"loss": generator_loss.detach(), "critic": critic_loss.detach()}

    def batches(epoch):
        return shuffled_batches(np.arange(10), 3, seed=run_seed, epoch=epoch)  # 3 steps an epoch

    return state, step, batches


def test_resuming_mid_run_equals_an_uninterrupted_run_exactly(tmp_path):
    def run_in(folder):
        folder.mkdir()
        return Run("toy", checkpoint=folder / "checkpoint.pt", meta={"seed": 4},
                   log=MetricsLog(folder / "metrics.jsonl", "toy"))

    state, step, batches = adversarial_toy(weights_seed=4)
    straight = run_in(tmp_path / "straight")
    fit(state, step, batches, epochs=4, run=straight)
    reference = {name: value.state_dict() for name, value in state.objects.items()}

    state, step, batches = adversarial_toy(weights_seed=4)
    broken = run_in(tmp_path / "broken")

    def crash_after_logging_epoch_3(epoch, line):
        if epoch.number == 3:
            raise Crash  # epoch 3's line is in the log, its checkpoint never written

    with pytest.raises(Crash):
        fit(state, step, batches, epochs=4, run=broken, hooks=Hooks(epoch_end=crash_after_logging_epoch_3))
    assert [json.loads(line)["epoch"] for line in broken.log.path.read_text().splitlines()] == [1, 2, 3]

    state, step, batches = adversarial_toy(weights_seed=99)  # other initial weights and random state: all replaced
    checkpoint = load_checkpoint(broken.checkpoint)
    assert (checkpoint["epoch"], checkpoint["step"], checkpoint["meta"]) == (2, 6, {"seed": 4})
    state.restore(checkpoint, "cpu")
    broken.log.truncate(state.epoch)
    fit(state, step, batches, epochs=4, run=broken)

    for name, value in state.objects.items():
        assert_same(value.state_dict(), reference[name], name)
    assert broken.log.path.read_text() == straight.log.path.read_text()  # every epoch once, the same values


def test_the_checkpoint_keeps_each_object_under_its_name_and_refuses_another_kind_of_run(tmp_path):
    model = linear_model()
    optimizer = torch.optim.AdamW(model.parameters())
    state = TrainState(model=model, optimizer=optimizer, scheduler=warmup_cosine(optimizer, 2, 10))
    state.step, state.epoch = 7, 3
    checkpoint = state.checkpoint({"vqvae": {"levels": 2}})
    # the layout every checkpoint of `train vqvae` and `train prior` has had (old ones resume)
    assert set(checkpoint) == {"model", "optimizer", "scheduler", "step", "epoch", "rng", "meta"}
    assert (checkpoint["step"], checkpoint["epoch"], checkpoint["meta"]) == (7, 3, {"vqvae": {"levels": 2}})
    assert torch.equal(checkpoint["rng"]["torch"], torch.get_rng_state())

    with_adversary = TrainState(model=linear_model(), adversary=linear_model())
    with pytest.raises(SkinaugError, match=r"^the checkpoint CK holds no adversary state: another kind of run made it"):
        with_adversary.restore(checkpoint, "cpu", "CK")


def two_players(lr: float = 0.1):
    """A GAN's layout (as `train baseline` keeps it): one optimizer and one schedule per player, each kind grouped
    under one checkpoint name."""
    generator, critic = linear_model(1.0), linear_model(-1.0)
    optimizers = {"generator": torch.optim.SGD(generator.parameters(), lr=lr),
                  "critic": torch.optim.SGD(critic.parameters(), lr=lr / 2)}
    schedules = {"generator": warmup_cosine(optimizers["generator"], 1, 8),
                 "critic": warmup_cosine(optimizers["critic"], 4, 20)}
    state = TrainState(model=torch.nn.ModuleDict({"generator": generator, "critic": critic}),
                       optimizer=Group(**optimizers), scheduler=Group(**schedules))
    return state, generator, critic


def test_a_group_keeps_each_players_state_under_one_name_and_fit_steps_every_schedule_in_it():
    state, generator, critic = two_players()

    def step(batch, steps_done):
        loss = GRADIENT * (generator.weight.sum() + critic.weight.sum())
        for name in ("generator", "critic"):
            state.objects["optimizer"][name].zero_grad()
        loss.backward()
        for name in ("generator", "critic"):
            state.objects["optimizer"][name].step()
        return {"loss": loss.detach()}

    fit(state, step, lambda epoch: range(3), epochs=2)
    assert state.schedulers == [state.objects["scheduler"]["generator"], state.objects["scheduler"]["critic"]]
    # 6 steps: the generator's warm-up is 1 step of 8, the critic's min(4, 20 // 10 + 1) = 3 of 20
    assert state.objects["optimizer"]["generator"].param_groups[0]["lr"] == pytest.approx(0.1 * lr_factor(6, 1, 8))
    assert state.objects["optimizer"]["critic"].param_groups[0]["lr"] == pytest.approx(0.05 * lr_factor(6, 3, 20))
    expected_critic = -1.0 - 0.05 * GRADIENT * sum(lr_factor(t, 3, 20) for t in range(6))
    assert critic.weight.item() == pytest.approx(expected_critic, abs=1e-6)

    checkpoint = state.checkpoint({})
    assert set(checkpoint["optimizer"]) == set(checkpoint["scheduler"]) == {"generator", "critic"}
    fresh, fresh_generator, fresh_critic = two_players(lr=0.7)  # other rates and weights: all replaced
    fresh.restore(checkpoint, "cpu")
    assert_same(fresh.checkpoint({}), checkpoint)
    assert fresh_critic.weight.item() == critic.weight.item() and fresh.step == 6


def test_the_metrics_log_truncates_only_its_own_stage_after_the_checkpoint_epoch(tmp_path):
    path = tmp_path / "metrics.jsonl"
    vqvae, top = MetricsLog(path, "vqvae"), MetricsLog(path, "prior_top")
    for epoch in (1, 2, 3):
        assert vqvae.append({"epoch": epoch, "val_mse": 0.1 / epoch}) == {"stage": "vqvae", "epoch": epoch,
                                                                            "val_mse": 0.1 / epoch}
    for epoch in (1, 2, 3):
        top.append({"epoch": epoch, "step": 4 * epoch})
    top.truncate(1)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(line["stage"], line["epoch"]) for line in lines] == [("vqvae", 1), ("vqvae", 2), ("vqvae", 3),
                                                                  ("prior_top", 1)]
    assert list(lines[0]) == ["stage", "epoch", "val_mse"]  # the stage first, then the line as given
    assert top.last() == {"stage": "prior_top", "epoch": 1, "step": 4}
    assert vqvae.last()["epoch"] == 3 and MetricsLog(path, "prior_bottom").last() == {}
    vqvae.reset()
    assert not path.exists() and vqvae.last() == {}
    vqvae.truncate(0)  # nothing to truncate: no file appears
    assert not path.exists()


def test_epoch_batches_are_seeded_per_epoch_and_sharded_without_overlap():
    indices = np.arange(100, 111)  # 11 items
    first = shuffled_batches(indices, 4, seed=2, epoch=0)
    assert [len(batch) for batch in first] == [4, 4]  # full batches only by default
    assert [len(batch) for batch in shuffled_batches(indices, 4, seed=2, epoch=0, drop_last=False)] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(shuffled_batches(indices, 4, seed=2, epoch=0)))
    assert not np.array_equal(np.concatenate(first), np.concatenate(shuffled_batches(indices, 4, seed=2, epoch=1)))
    whole = np.concatenate(shuffled_batches(indices, 1, seed=2, epoch=0))
    assert sorted(whole) == list(indices)

    ranks = [Distributed(rank=rank, world_size=2) for rank in (0, 1)]
    shards = [np.concatenate(shuffled_batches(indices, 1, seed=2, epoch=0, dist=rank)) for rank in ranks]
    assert len(shards[0]) == len(shards[1]) == 5  # the same count on every rank keeps DDP in lockstep
    assert not set(shards[0]) & set(shards[1])
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.sort(whole[:10]))  # one permutation, dealt out
    assert steps_per_epoch(11, 4, dist=ranks[1]) == 1 and steps_per_epoch(11, 4, dist=ranks[1], drop_last=False) == 2
    assert steps_per_epoch(2, 4) == 1  # never an epoch of no steps
