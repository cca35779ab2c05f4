"""Readers for public cluster traces: each returns a tidy DataFrame or raises a TraceError.

Why one strict reader per format instead of ``pd.read_csv`` at the call site: a
replay that silently turns a malformed row into NaN (or drops a blank line and
shifts every later row) gives numbers nobody can trace back. Every reader here
checks the header, every field's type and range, and reports the first bad field
as ``<file>, line <n>, column <name>: <rule>`` (line 1 is the header).

Formats (any path in the same layout loads the same way):

* ``alibaba-openb`` nodes (cluster-trace-gpu-v2023): ``sn,cpu_milli,memory_mib,gpu,model``
  -> columns ``name, cpu_milli, memory_mib, gpu, model`` (``model`` is "" for CPU nodes).
* ``alibaba-openb`` pods: ``name,cpu_milli,memory_mib,num_gpu,gpu_milli`` required;
  ``gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time`` optional (the
  multigpu50 list has none of them). ``gpu_milli`` is the share of EACH of the pod's
  ``num_gpu`` GPUs (< 1000 only for GPU-sharing pods with one GPU); ``gpu_spec`` is a
  ``|``-separated list of allowed GPU models ("" = any). Times are seconds, NaN when
  absent or empty.
* ``alibaba-v2017`` ``batch_task`` -> ``create_time_s, end_time_s, job_id, task_id,
  instances, status, cpu_per_instance`` (cores; the file stores 1/100 core) ``,
  mem_per_instance_norm`` (normalised 0-1). ``end_time_s`` is NaN when the file says 0
  (task still running/waiting when the trace was cut); empty CPU requests are NaN.
* ``azure-functions-2021`` -> ``app, func, end_s, duration_s, start_s`` (start = end - duration).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..datadir import data_dir, missing_hint
from ..errors import SpecError

# the repository's data/ folder; DTLAB_DATA_DIR overrides it (dtlab.datadir is the one resolver)
DATA_DIR = data_dir()
TRACE_DIR = DATA_DIR / "traces"
OPENB_NODES = TRACE_DIR / "alibaba-openb" / "openb_node_list_all_node.csv"
OPENB_PODS = TRACE_DIR / "alibaba-openb" / "openb_pod_list_default.csv"
V2017_BATCH_TASK = TRACE_DIR / "alibaba-v2017" / "batch_task.csv"
AZURE_2021 = TRACE_DIR / "azure-functions-2021" / "Azure2021_200.csv"


class TraceError(SpecError):
    """A malformed trace file; ``path``, ``line`` (1 = header) and ``column`` locate the bad field."""

    def __init__(self, path, line: int | None, column: str | None, rule: str):
        self.path = str(path)
        self.line = line
        self.column = column
        where = self.path
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column}"
        super().__init__(where, rule)


@dataclass(frozen=True)
class Col:
    """One CSV column: ``kind`` int|float|str; ``empty``: value used for an empty field (None: not allowed)."""
    name: str
    kind: str = "int"
    required: bool = True
    ge: float | None = None
    le: float | None = None
    empty: object = None
    rename: str | None = None


def read_table(path, columns: Sequence[Col], what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise TraceError(path, None, None, f"{what} file not found{missing_hint(path)}")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False,
                          skip_blank_lines=False, skipinitialspace=True,
                          compression="infer", engine="c")
    except pd.errors.ParserError as exc:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if m:
            raise TraceError(path, int(m.group(2)), f"#{int(m.group(1)) + 1} (extra field)",
                             f"has {m.group(3)} fields, the header has {m.group(1)}") from None
        raise TraceError(path, None, None, f"not a valid CSV file: {exc}") from None
    except pd.errors.EmptyDataError:
        raise TraceError(path, 1, None, "file is empty (no header)") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    for col in columns:
        if col.required and col.name not in raw.columns:
            raise TraceError(path, 1, col.name, f"missing column (header has {list(raw.columns)})")
    # A blank line reads as a row of empty fields: drop it, but keep counting file lines.
    # (A short row reads with empty trailing fields and fails the per-column check below.)
    raw = raw.fillna("")
    blank = (raw.apply(lambda c: c.str.strip()) == "").all(axis=1).to_numpy()
    lines = np.arange(len(raw)) + 2
    keep = ~blank
    raw, lines = raw[keep], lines[keep]
    out = {}
    for col in columns:
        if col.name not in raw.columns:
            continue
        out[col.rename or col.name] = _convert(raw[col.name].to_numpy(dtype=object), col, lines, path)
    df = pd.DataFrame(out)
    for col in columns:  # optional columns absent from the file: NaN / ""
        key = col.rename or col.name
        if key not in df.columns:
            df[key] = "" if col.kind == "str" else np.nan
    df = df[[c.rename or c.name for c in columns]].reset_index(drop=True)
    df.attrs["lines"] = lines  # file line of each row, for checks that span columns
    return df


def _convert(values: np.ndarray, col: Col, lines: np.ndarray, path) -> np.ndarray:
    text = np.array([v.strip() for v in values], dtype=object)
    empty = text == ""
    if empty.any() and col.empty is None:
        i = int(np.argmax(empty))
        raise TraceError(path, int(lines[i]), col.name, "empty field")
    if col.kind == "str":
        return np.where(empty, col.empty if col.empty is not None else "", text).astype(object)
    nums = pd.to_numeric(pd.Series(np.where(empty, "0", text)), errors="coerce").to_numpy(dtype=float)
    bad = np.isnan(nums) & ~empty | ~np.isfinite(np.where(np.isnan(nums), 0.0, nums))
    if bad.any():
        i = int(np.argmax(bad))
        raise TraceError(path, int(lines[i]), col.name, f"not a number: {text[i]!r}")
    if col.kind == "int":
        frac = (nums != np.round(nums)) & ~empty
        if frac.any():
            i = int(np.argmax(frac))
            raise TraceError(path, int(lines[i]), col.name, f"must be an integer, got {text[i]!r}")
    if col.ge is not None:
        low = (nums < col.ge) & ~empty
        if low.any():
            i = int(np.argmax(low))
            raise TraceError(path, int(lines[i]), col.name, f"must be >= {col.ge:g}, got {text[i]!r}")
    if col.le is not None:
        high = (nums > col.le) & ~empty
        if high.any():
            i = int(np.argmax(high))
            raise TraceError(path, int(lines[i]), col.name, f"must be <= {col.le:g}, got {text[i]!r}")
    if empty.any():
        nums = np.where(empty, np.nan if col.empty == "nan" else float(col.empty), nums)
    if col.kind == "int" and not np.isnan(nums).any():
        return nums.astype(np.int64)
    return nums


def _row_error(path, df: pd.DataFrame, mask: np.ndarray, column: str, rule: str, key: str | None = None):
    """Raise for the first row in ``mask``; ``column`` is the file's name, ``key`` the DataFrame's."""
    if mask.any():
        i = int(np.argmax(mask))
        raise TraceError(path, int(df.attrs["lines"][i]), column, rule.format(value=df[key or column].iloc[i]))


# ------------------------------------------------------------------ alibaba openb (GPU v2023)

def read_openb_nodes(path=OPENB_NODES) -> pd.DataFrame:
    """Node list of the openb GPU cluster: name, cpu_milli, memory_mib, gpu (count), model."""
    df = read_table(path, [
        Col("sn", "str", rename="name"),
        Col("cpu_milli", ge=1), Col("memory_mib", ge=1), Col("gpu", ge=0),
        Col("model", "str", required=False, empty=""),
    ], "openb node list")
    _row_error(path, df, ((df["gpu"] > 0) & (df["model"] == "")).to_numpy(), "model",
               "a node with GPUs must name its GPU model")
    _row_error(path, df, ((df["gpu"] == 0) & (df["model"] != "")).to_numpy(), "model",
               "a node without GPUs cannot have a GPU model ({value!r})")
    _row_error(path, df, df["name"].duplicated().to_numpy(), "sn", "duplicate node name {value!r}", key="name")
    return df


def read_openb_pods(path=OPENB_PODS) -> pd.DataFrame:
    """Pod list of the openb trace (see module docstring for columns and units)."""
    df = read_table(path, [
        Col("name", "str"),
        Col("cpu_milli", ge=0), Col("memory_mib", ge=0), Col("num_gpu", ge=0),
        Col("gpu_milli", ge=0, le=1000),
        Col("gpu_spec", "str", required=False, empty=""),
        Col("qos", "str", required=False, empty=""),
        Col("pod_phase", "str", required=False, empty=""),
        Col("creation_time", "float", required=False, ge=0, empty="nan"),
        Col("deletion_time", "float", required=False, ge=0, empty="nan"),
        Col("scheduled_time", "float", required=False, ge=0, empty="nan"),
    ], "openb pod list")
    gpu, milli = df["num_gpu"].to_numpy(), df["gpu_milli"].to_numpy()
    _row_error(path, df, (gpu == 0) & (milli != 0), "gpu_milli",
               "a pod without GPUs must have gpu_milli 0, got {value}")
    _row_error(path, df, (gpu > 0) & (milli == 0), "gpu_milli",
               "a pod with GPUs needs gpu_milli > 0")
    _row_error(path, df, (gpu > 1) & (milli != 1000), "gpu_milli",
               "a multi-GPU pod must use whole GPUs (gpu_milli 1000), got {value}")
    bad_order = (df["deletion_time"] < df["creation_time"]).to_numpy()
    _row_error(path, df, bad_order, "deletion_time", "deletion before creation ({value})")
    return df


# ------------------------------------------------------------------ alibaba v2017 batch_task

def read_alibaba_v2017_batch_task(path=V2017_BATCH_TASK) -> pd.DataFrame:
    """Alibaba cluster-trace-v2017 batch tasks (create/end time, instances, per-instance requests)."""
    df = read_table(path, [
        Col("task_create_time", "float", rename="create_time_s"),
        Col("task_end_time", "float", rename="end_time_s"),  # negative: before trace start
        Col("job_id", ge=0), Col("task_id", ge=0),
        Col("number_of_instances", rename="instances", ge=0),
        Col("status", "str"),
        Col("number_of_cpus_requested_per_instance_in_the_task", "float", rename="cpu_per_instance",
            ge=0, empty="nan"),
        Col("normalized_memory_requested_per_instance_in_the_task", "float",
            rename="mem_per_instance_norm", ge=0, le=1, empty="nan"),
    ], "alibaba v2017 batch_task")
    df["cpu_per_instance"] = df["cpu_per_instance"] / 100.0
    df["end_time_s"] = df["end_time_s"].where(df["end_time_s"] != 0, np.nan)
    # Not checked: end < create (one real row ends 1 s before it starts; kept as recorded).
    return df


# ------------------------------------------------------------------ azure functions 2021

def read_azure_functions_2021(path=AZURE_2021) -> pd.DataFrame:
    """Azure Functions 2021 invocations: app, func, end_s, duration_s, start_s."""
    df = read_table(path, [
        Col("app", "str"), Col("func", "str"),
        Col("end_timestamp", "float", rename="end_s", ge=0),
        Col("duration", "float", rename="duration_s", ge=0),
    ], "azure functions 2021")
    df["start_s"] = df["end_s"] - df["duration_s"]
    return df


READERS = {
    "alibaba-openb": read_openb_pods,
    "alibaba-openb-nodes": read_openb_nodes,
    "alibaba-v2017": read_alibaba_v2017_batch_task,
    "azure-functions-2021": read_azure_functions_2021,
}


def read_trace(format: str, path=None) -> pd.DataFrame:
    """Dispatch on a trace ``format`` name (as used in ``Workload.arrivals.trace``)."""
    try:
        reader = READERS[format]
    except KeyError:
        raise SpecError("trace.format", f"must be one of {sorted(READERS)}, got {format!r}") from None
    return reader() if path is None else reader(path)
