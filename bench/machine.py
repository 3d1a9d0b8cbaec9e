"""The suite's machine-state helpers live in the package (`ttqkern.bench.machine`), shared with the
end-to-end benchmark; re-exported here for the bench files."""

from ttqkern.bench.machine import OthersCpu, ReadProbe, idle_share, llc_bytes, load_average

__all__ = ["OthersCpu", "ReadProbe", "idle_share", "llc_bytes", "load_average"]
