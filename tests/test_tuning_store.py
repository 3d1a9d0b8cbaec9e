"""Config store round trip and the device catalog."""

import pytest
import torch

from ttqkern.tuning import devices, store


def test_save_then_lookup_overrides_defaults(config_dir):
    key = store.make_key("numba", "qmatmul", bits=4, T=store.bucket(3), N=store.bucket(4000), K=4096)
    assert key == "numba/qmatmul/bits=4/T=4/N=4096/K=4096"
    assert store.lookup("cpu", key, {"A": 1, "B": 2}) == {"A": 1, "B": 2}
    path = store.save("cpu", {key: {"A": 7}})
    assert path.parent == config_dir
    assert store.lookup("cpu", key, {"A": 1, "B": 2}) == {"A": 7, "B": 2}
    store.save("cpu", {"other": {"A": 3}})  # merges, keeps the first entry
    assert store.lookup("cpu", key, {"A": 1}) == {"A": 7}


def test_entry_with_unknown_fields_is_ignored_with_warning(config_dir):
    store.save("cpu", {"k": {"NOPE": 1}})
    with pytest.warns(UserWarning, match="unexpected fields"):
        assert store.lookup("cpu", "k", {"A": 1}) == {"A": 1}


@pytest.mark.parametrize("n,b", [(1, 1), (2, 2), (3, 4), (16, 16), (17, 32), (4096, 4096), (11008, 16384)])
def test_bucket(n, b):
    assert store.bucket(n) == b


@pytest.mark.parametrize(
    "name,slug",
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
        ("NVIDIA A40", "a40"),
        ("NVIDIA L40", "l40"),
        ("NVIDIA GeForce RTX 3090", "rtx3090"),
        ("NVIDIA GeForce RTX 4090", "rtx4090"),
        ("AMD Instinct MI300X", "mi300x"),
    ],
)
def test_catalog_matches_device_names(name, slug):
    assert devices.lookup_gpu(name).slug == slug


def test_unknown_gpu_and_cpu():
    assert devices.lookup_gpu("Some Future GPU") is None
    assert devices.device_slug("cpu") == "cpu"
    assert devices.measure_cpu_bandwidth(1 << 22, repeats=2) > 0


def test_catalog_figures_targets_and_provenance(config_dir):
    for d in devices.CATALOG:
        assert d.sms > 0 and d.clock_mhz > 0 and d.smem_kib > 0 and d.source and d.arch
    assert devices.target("a100-80gb").target == "sm_80" and devices.target("rtx3090").target == "sm_86"
    assert devices.target("l40").target == "sm_89" and devices.target("h200").target == "sm_90"
    assert devices.target("cpu").slug == "cpu" and devices.target(torch.device("cpu")).vendor == "cpu"
    table = devices.catalog_table()
    assert "| NVIDIA H200 | h200 | sm_90 | 132 |" in table and table.count("| derived |") >= 6
    path = store.save("cpu", {"k": {"A": 1}}, meta={"command": "x"})
    entry, src = store.sourced_entry("cpu", "k")
    assert entry == {"A": 1} and src.kind == "user" and src.path == path
    assert store.provenance(src, "k") == {"command": "x"}
    store.save("cpu", {"k": {"A": 2}})  # merging without meta keeps the key's provenance
    assert store.provenance(store.sourced_entry("cpu", "k")[1], "k") == {"command": "x"}
    with store.override("cpu", "k", {"A": 3}):
        assert store.sourced_entry("cpu", "k") == ({"A": 3}, store.Source("override"))
