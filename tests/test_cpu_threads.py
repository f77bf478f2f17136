"""How many CPU threads the backends use: the affinity mask capped by the cgroup's CPU quota (skinaug.runtime)."""

import pytest

from skinaug import runtime
from skinaug.runtime import cgroup_cpu_quota, usable_cpus


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_of_the_process_or_an_ancestor(tmp_path):
    write(tmp_path / "cpu.max", "max 100000\n")
    write(tmp_path / "user.slice" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota("0::/user.slice/job\n", tmp_path) is None
    write(tmp_path / "user.slice" / "job" / "cpu.max", "200000 100000\n")
    assert cgroup_cpu_quota("0::/user.slice/job\n", tmp_path) == 2.0
    write(tmp_path / "user.slice" / "cpu.max", "150000 100000\n")  # the tightest along the path counts
    assert cgroup_cpu_quota("0::/user.slice/job\n", tmp_path) == 1.5


def test_cgroup_v2_inside_a_container_reads_the_mount_root(tmp_path):
    """A container's /proc/self/cgroup names the host's path; its own cgroup is mounted as the root."""
    write(tmp_path / "cpu.max", "200000 100000")
    assert cgroup_cpu_quota("0::/kubepods/pod1/abc\n", tmp_path) == 2.0


def test_cgroup_v1_cfs_quota(tmp_path):
    text = "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n"
    write(tmp_path / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "-1\n")
    write(tmp_path / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(text, tmp_path) is None
    write(tmp_path / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "300000\n")
    assert cgroup_cpu_quota(text, tmp_path) == 3.0


@pytest.mark.parametrize("text", ["", "garbage\n", "0::relative\n", "1:name=systemd:/\n"])
def test_no_cgroup_files_means_no_quota(tmp_path, text):
    write(tmp_path / "cpu.max", "not numbers")
    assert cgroup_cpu_quota(text, tmp_path) is None
    assert cgroup_cpu_quota("0::/\n", tmp_path / "absent") is None


def test_usable_cpus_caps_the_affinity_by_the_quota():
    assert usable_cpus(affinity=64, quota=2.0) == 2  # a container that shows the host's CPUs
    assert usable_cpus(affinity=64, quota=2.5) == 2  # rounded down: a throttled OpenMP thread stalls the others
    assert usable_cpus(affinity=2, quota=8.0) == 2
    assert usable_cpus(affinity=4, quota=0.5) == 1
    assert usable_cpus(affinity=3, quota=None) == 3
    assert usable_cpus() >= 1


def test_torch_threads_are_lowered_to_the_usable_cpus_once(monkeypatch):
    torch = pytest.importorskip("torch")
    saved = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "usable_cpus", lambda: 1)
    try:
        monkeypatch.setattr(runtime, "_torch_threads_fitted", False)
        torch.set_num_threads(2)
        runtime.fit_torch_threads()
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)  # the program's own later choice stands
        runtime.fit_torch_threads()
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(runtime, "_torch_threads_fitted", False)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # an explicit choice is never overridden
        runtime.fit_torch_threads()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)
