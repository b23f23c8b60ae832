"""`ops prepare model` and `ops prepare chat-template`: the tutorial's preparation steps, checked.

I/O: downloads into the Hugging Face cache (network) and rewrites the cached template files. Printing only here;
the work is in training.hf_cache and training.chat_template.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import structlog

from ops.errors import UserError
from training import chat_template, hf_cache

log = structlog.get_logger()

_model_opt = click.option("--model", default=hf_cache.DEFAULT_MODEL, show_default=True, help="Hub model id.")
_home_opt = click.option("--hf-home", type=click.Path(file_okay=False, path_type=Path), default=None,
                         help="Cache root (default: $HF_HOME, as NeMo RL will see it).")
_json_opt = click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")


def _env(hf_home: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if hf_home is not None:
        env["HF_HOME"] = str(hf_home)
        env.pop("HF_HUB_CACHE", None)
    return env


@click.group("prepare")
def prepare() -> None:
    """Download the model and patch its chat template, as the NeMo RL + Gym tutorial does by hand.

    \b
    Exit codes: 0 complete / patched and verified; 1 verification failed; 2 usage error (bad model, offline
    with an incomplete cache, the Hub still answering 429 after --attempts).
    \b
    Examples:
      ops prepare model                       download nvidia/NVIDIA-Nemotron-Nano-9B-v2 into $HF_HOME
      ops prepare chat-template --dry-run     show what the template edits would change
    """


@prepare.command("model")
@_model_opt
@_home_opt
@click.option("--revision", default="main", show_default=True)
@click.option("--refresh", is_flag=True, help="Ask the Hub even when the cached snapshot is already complete.")
@click.option("--attempts", type=click.IntRange(1, 50), default=6, show_default=True,
              help="Tries in all when the Hub answers 429 Too Many Requests (exponential back-off).")
@_json_opt
def prepare_model(model: str, hf_home: Path | None, revision: str, refresh: bool, attempts: int,
                  as_json: bool) -> int:
    """Download MODEL into the cache (resumable; HF_TOKEN from the environment), then prove it complete."""
    env = _env(hf_home)
    cache = hf_cache.hub_cache_dir(env)
    before = hf_cache.verify_snapshot(cache, model, revision)
    downloaded, retries = False, []
    if refresh or not before.complete:
        if env.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise UserError(f"{model} is not complete in {cache} and HF_HUB_OFFLINE={env['HF_HUB_OFFLINE']} "
                            f"forbids downloading; unset HF_HUB_OFFLINE and rerun 'ops prepare model'")
        try:
            hf_cache.download_model(model, cache, env, revision=revision,
                                    policy=hf_cache.RetryPolicy(attempts=attempts),
                                    on_retry=lambda n, wait: (retries.append(wait), click.echo(
                                        f"Hub rate limit (HTTP 429) on try {n}; waiting {wait:.0f} s", err=True)),
                                    progress=not as_json)
        except Exception as err:  # the Hub's errors are the user's to fix (auth, gating, network, 429 budget)
            if hf_cache.is_rate_limited(err):
                raise UserError(f"the Hub kept answering 429 Too Many Requests after {attempts} tries; "
                                f"wait and rerun 'ops prepare model' (the download resumes)") from err
            raise UserError(f"download of {model} failed: {type(err).__name__}: {str(err).splitlines()[0]} "
                            "(check HF_TOKEN access to the model and the network, then rerun)") from err
        downloaded = True
    report = hf_cache.verify_snapshot(cache, model, revision)
    log.info("prepare_model", model=model, complete=report.complete, downloaded=downloaded, retries=len(retries))
    if as_json:
        click.echo(json.dumps({**report.to_json(), "downloaded": downloaded, "retries": len(retries),
                               "offline_safe": report.complete}, indent=2))
    elif report.complete:
        click.echo(f"OK   {model} complete at {report.snapshot} ({report.shards_present} shards, "
                   f"{report.size_bytes / 2**30:.1f} GiB); HF_HUB_OFFLINE=1 is safe")
    else:
        for problem in report.problems:
            click.echo(f"FAIL {problem}")
        click.echo(f"fix: {report.fix}")
    return 0 if report.complete else 1


@prepare.command("chat-template")
@_model_opt
@_home_opt
@click.option("--path", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A model directory or snapshot to patch instead of the cached MODEL.")
@click.option("--dry-run", is_flag=True, help="Say what would change; write nothing.")
@_json_opt
def prepare_chat_template(model: str, hf_home: Path | None, model_dir: Path | None, dry_run: bool,
                          as_json: bool) -> int:
    """Default thinking off and keep a trailing assistant turn (the tutorial's two seds), verified by rendering."""
    snapshot = model_dir or _cached_snapshot(model, _env(hf_home))
    try:
        results = chat_template.patch_snapshot(snapshot, dry_run=dry_run)
    except FileNotFoundError as err:
        raise UserError(f"{err}; pass --path to the model directory or run 'ops prepare model' first") from err
    except ValueError as err:
        raise UserError(f"{err}; this does not look like a chat model's tokenizer config") from err
    if as_json:
        click.echo(json.dumps([{"path": str(r.path), "status": r.status, "applied": list(r.applied),
                                "backup": str(r.backup) if r.backup else None, "verified": r.ok,
                                "problems": list(r.verification.problems) if r.verification else []}
                               for r in results], indent=2))
    else:
        for r in results:
            word = "OK  " if r.ok else "FAIL"
            extra = f" ({', '.join(r.applied)}; backup {r.backup.name})" if r.backup and r.applied else ""
            click.echo(f"{word} {r.path.name}: {r.status}{extra}")
            for problem in (r.verification.problems if r.verification else ()):
                click.echo(f"     {problem}")
    return 0 if all(r.ok for r in results) else 1


def _cached_snapshot(model: str, env: dict[str, str]) -> Path:
    cache = hf_cache.hub_cache_dir(env)
    snap = hf_cache.snapshot_dir(cache, model)
    if snap is None or not snap.is_dir():
        raise UserError(f"{model} is not in the cache {cache}; run 'ops prepare model --model {model}' first "
                        "(or set --hf-home / HF_HOME)")
    return snap


command = prepare
