"""Preflight across a Ray cluster: the node checks run on every alive node, one Ray task pinned to each
(NodeAffinitySchedulingStrategy, soft=False), and come back as CheckResults labelled with their node.

How it travels: `run_cluster_preflight` (the submitter, I/O: HTTP) submits one Ray job through the Jobs API,
the same door `ops run --ray-address` uses; that job's driver (`python -m healthchecks.cluster ARGS`, I/O:
Ray) fans out the tasks and prints one line `GRPO_OPS_CLUSTER_RESULTS <json>`, which the submitter reads from
the job's log. So the submitting machine needs only the dashboard URL, not Ray's other ports or a matching Ray
version. The submitter's environment is forwarded as for a run (so a node sees what the trainer would see),
and the config / results paths are made absolute: the multi-node assumption is a shared filesystem.
`summarize` is pure.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from healthchecks.base import CheckResult, Status, worst

MARK = "GRPO_OPS_CLUSTER_RESULTS "
# The local-cluster check looks for a Ray cluster NeMo RL would attach to by accident; on a cluster node that
# cluster is the one we target on purpose (and the probe's own driver is attached to it).
SKIP_ON_CLUSTER = ("ray_cluster",)
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ProbeArgs:
    """The `ops preflight` flags, as each node rebuilds its CheckContext from them."""
    gpus: int | None = None
    require_gpu: bool = False
    results_dir: str = "results"
    config: str | None = None
    overrides: tuple[str, ...] = ()
    trainer: str = "embedded"
    min_free_gpu_mib: int | None = None
    min_free_disk_gib: float | None = None
    only: tuple[str, ...] = ()
    skip: tuple[str, ...] = field(default=SKIP_ON_CLUSTER)
    task_timeout_s: float = 300.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ProbeArgs":
        d = json.loads(text)
        return cls(**{**d, "overrides": tuple(d["overrides"]), "only": tuple(d["only"]), "skip": tuple(d["skip"])})


# ------------------------------------------------------------------------------ on each node (a Ray task)
def node_results(args: ProbeArgs) -> list[dict]:
    """Run the selected checks here, on this node; never raises (a broken context is one FAIL)."""
    from healthchecks.runner import run_preflight
    from ops.cmd_preflight import build_context
    from ops.errors import UserError
    try:
        ctx = build_context(args.gpus, args.require_gpu, args.results_dir, args.config, args.overrides,
                            args.trainer, args.min_free_gpu_mib, args.min_free_disk_gib)
        results = run_preflight(ctx, args.only, args.skip)
    except UserError as err:
        results = [CheckResult("context", Status.FAIL, f"cannot check this node: {err}",
                               "make the config / paths readable on every node (shared filesystem)")]
    return [r.to_json() for r in results]


# ------------------------------------------------------------------------------ the job's driver
def node_label(node: Mapping) -> str:
    """`<ip> <node id prefix>` (+ ` head`): the IP alone is not unique when nodes share a host."""
    head = any(k == "node:__internal_head__" for k in node.get("Resources", {}))
    return f"{node.get('NodeManagerAddress', '?')} {node['NodeID'][:8]}" + (" head" if head else "")


def probe(args: ProbeArgs) -> dict:
    """Fan one pinned task out to each alive node; collect what each returned (or why it did not)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init(logging_level="ERROR")
    remote = ray.remote(num_cpus=0, max_retries=0)(node_results)
    nodes = sorted(ray.nodes(), key=lambda n: (not n.get("Resources", {}).get("node:__internal_head__"),
                                               n["NodeID"]))
    out, refs = [], {}
    for n in nodes:
        custom = {k: v for k, v in n.get("Resources", {}).items()
                  if not k.startswith("node:") and k not in ("CPU", "GPU", "memory", "object_store_memory")}
        row = {"node_id": n["NodeID"], "label": node_label(n), "alive": bool(n["Alive"]), "resources": custom,
               "results": None, "error": None}
        out.append(row)
        if n["Alive"]:
            strategy = NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False)
            refs[remote.options(scheduling_strategy=strategy).remote(args)] = row
    done, pending = ray.wait(list(refs), num_returns=len(refs), timeout=args.task_timeout_s)
    for ref in done:
        try:
            refs[ref]["results"] = ray.get(ref)
        except Exception as err:
            refs[ref]["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    for ref in pending:
        refs[ref]["error"] = f"did not answer within {args.task_timeout_s:.0f}s"
        ray.cancel(ref, force=True)
    return {"nodes": out}


# ------------------------------------------------------------------------------ pure: results per node
def summarize(nodes: Sequence[Mapping]) -> list[CheckResult]:
    """A cluster verdict naming failing nodes, then per node: its verdict and its checks (node set)."""
    per_node: list[CheckResult] = []
    failing, alive = [], 0
    for n in nodes:
        label = n["label"]
        if not n["alive"]:
            per_node.append(CheckResult("node", Status.WARN, f"node {label} is dead; nothing runs there",
                                        "restart its raylet (ray start --address) or ignore it",
                                        {"node_id": n["node_id"]}, node=label))
            continue
        alive += 1
        if n.get("error") or n.get("results") is None:
            failing.append(label)
            per_node.append(CheckResult("node", Status.FAIL, f"node {label}: the checks did not run: "
                                        f"{n.get('error') or 'no results'}",
                                        "see that node's raylet logs; is it overloaded or unreachable?",
                                        {"node_id": n["node_id"]}, node=label))
            continue
        results = [_from_json(r, label) for r in n["results"]]
        verdict = worst(results)
        bad = [r.name for r in results if r.status in (Status.FAIL, Status.WARN)]
        if verdict == Status.FAIL:
            failing.append(label)
        detail = f"node {label}: {len(results)} checks" + (f", not PASS: {', '.join(bad)}" if bad else ", all PASS")
        per_node.append(CheckResult("node", verdict, detail, "", {"node_id": n["node_id"],
                                                                  "resources": n.get("resources", {})}, node=label))
        per_node.extend(results)
    overall = worst([r for r in per_node if r.name == "node"]) if per_node else Status.FAIL
    head = (f"{alive} alive node(s) of {len(nodes)}" +
            (f"; FAIL on {', '.join(failing)}" if failing else ""))
    cluster = CheckResult("cluster", Status.FAIL if failing or not alive else overall, head,
                          "fix the named node(s), or drain them from the cluster" if failing else "",
                          {"nodes": [n["label"] for n in nodes], "failing": failing})
    return [cluster, *per_node]


def _from_json(d: Mapping, label: str) -> CheckResult:
    return CheckResult(d["name"], Status(d["status"]), d.get("detail", ""), d.get("fix", ""), d.get("data") or {},
                       d.get("fix_id"), node=label)


# ------------------------------------------------------------------------------ the submitter
def cluster_preflight(address: str, ctx, only: Sequence[str] = (), skip: Sequence[str] = (),
                      timeout_s: float = 600.0) -> list[CheckResult]:
    """`ops preflight --ray-address`: the CLI's context, checked here for bad names, run on every node."""
    from healthchecks.base import select
    from healthchecks.registry_modules import load_checks
    load_checks()
    skip = tuple(skip) + tuple(n for n in SKIP_ON_CLUSTER if n not in only and n not in skip)
    select(only, skip)                                       # an unknown check name fails here, not on a node
    args = ProbeArgs(gpus=ctx.gpus_required, require_gpu=ctx.require_gpu,
                     results_dir=str(Path(ctx.results_dir).absolute()),
                     config=str(Path(ctx.config_path).absolute()) if ctx.config_path else None,
                     overrides=tuple(ctx.overrides), trainer=ctx.trainer, min_free_gpu_mib=ctx.min_free_gpu_mib,
                     min_free_disk_gib=ctx.min_free_disk_gib, only=tuple(only), skip=skip)
    return run_cluster_preflight(address, args, timeout_s)


def run_cluster_preflight(address: str, args: ProbeArgs, timeout_s: float = 600.0,
                          env: Mapping[str, str] | None = None) -> list[CheckResult]:
    """Submit the probe job to the cluster at `address` (dashboard URL) and return the per-node results."""
    from ops.backends.ray_job import connect, job_env, _nonce
    client = connect(address)
    env = dict(os.environ if env is None else env)
    forwarded = job_env(env, stop_wait_s=3)
    forwarded["PYTHONPATH"] = str(REPO) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # Let each task see the node's GPUs as the trainer would, not the empty set Ray gives a num_gpus=0 task.
    forwarded["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"] = "1"
    sid = f"grpo-ops-preflight-{_nonce()}"
    cmd = f"cd {shlex.quote(str(REPO))} && exec {shlex.join([sys.executable, '-m', 'healthchecks.cluster', args.to_json()])}"
    client.submit_job(entrypoint=cmd, submission_id=sid, runtime_env={"env_vars": forwarded},
                      metadata={"grpo_ops_preflight": "1"})
    deadline = time.monotonic() + timeout_s
    status = "PENDING"
    while time.monotonic() < deadline:
        status = str(client.get_job_status(sid).value)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(0.5)
    else:
        client.stop_job(sid)
    logs = client.get_job_logs(sid)
    found = [line[len(MARK):] for line in logs.splitlines() if line.startswith(MARK)]
    if not found:
        tail = " | ".join(logs.strip().splitlines()[-3:])[-400:]
        return [CheckResult("cluster", Status.FAIL, f"the cluster preflight job {sid} ended {status} without "
                            f"results: {tail}", "check that this repo and Python are at the same paths on the "
                            "head node (shared filesystem)", {"job_id": sid})]
    try:
        client.delete_job(sid)
    except Exception:
        pass                      # a finished probe left in the job table is harmless
    return summarize(json.loads(found[-1])["nodes"])


if __name__ == "__main__":
    print(MARK + json.dumps(probe(ProbeArgs.from_json(sys.argv[1]))), flush=True)
