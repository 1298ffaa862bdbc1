"""Calibrate the perplexity gate on the loaded base model:

    python -m router.calibrate [--profile demo] [--share 0.5]
    python -m router.calibrate --model BASE.gguf      (your own base: prints the --tau-p to start it with)

Scores every prompt in router/data/domain.jsonl with the profile's base model (a one-message
conversation under the app's system prompt) and sets τp to the perplexity below which `share` of
them fall, so that share of messages goes to the plain base. τp is written into the profile's
settings.router in models/manifest.json, with the base file's digest it was measured on."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from router.decision import DOMAINS
from router.evaluate import read_jsonl
from router.perplexity import Perplexity

DATA = Path(__file__).resolve().parent / "data" / "domain.jsonl"
# Fewer prompts than this give a τp that is mostly chance (QA 24: one prompt wrote a τp that sent every message to
# base); --dry-run still shows it.
MIN_PROMPTS = 30  # different prompts: thirty copies of one, or of two, are one or two (QA 25, 26)
SHARE_MISSED = 0.1  # ... and prompts that tie miss the share asked by more than this


def tau_for_share(perplexities: list[float], share: float) -> float:
    """The perplexity at or below which `share` of the prompts fall."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must be between 0 and 1 (exclusive), not {share}")
    return float(np.quantile(np.asarray(perplexities), share, method="inverted_cdf"))


def different_prompts(texts: list[str]) -> int:
    """How many different prompts, case and spacing aside (QA 27: forty of one in other cases passed as forty)."""
    return len({" ".join(t.split()).casefold() for t in texts})


def refusal(values: list[float], texts: list[str], share: float, dry_run: bool) -> str | None:
    """Why the τp of these scored prompts is not written, or None: too few different prompts (QA 24: one; QA 25,
    26: one or two, repeated), or a τp that misses the share asked (prompts that tie). --dry-run shows it anyway."""
    if dry_run:
        return None
    different = different_prompts(texts)
    if different < MIN_PROMPTS:
        count = (f"{len(texts)} prompt{' is' if len(texts) == 1 else 's are'} too few" if different == len(texts) else
                 f"the {len(texts)} prompts are only {different} different one{'s' * (different > 1)}, too few")
        return (f"{count}: at least {MIN_PROMPTS} different prompts are needed for τp to send the share asked for; "
                f"nothing was written. Give more prompts (--data, or a larger --limit), or --dry-run to see τp only.")
    tau = tau_for_share(values, share)
    reached = float(np.mean(np.array(values) <= tau))
    if abs(reached - share) > SHARE_MISSED:
        shown = len({round(v, 2) for v in values})  # as the table shows them: not the last digits of one float
        return (f"τp {tau:.4f} sends {reached:.0%} of these prompts to base, not the {share:.0%} asked: the "
                f"{len(values)} prompts score only {shown} different perplexit{'y' if shown == 1 else 'ies'}; nothing "
                f"was written. Give varied prompts (--data), or --dry-run to see τp only.")
    return None


def main(argv: list[str] | None = None) -> int:
    from launch import _positive_int, bounded  # launch.py's argparse types, as its own flags check numbers

    parser = argparse.ArgumentParser(prog="python -m router.calibrate", description=__doc__.split(":\n\n")[0] + ".",
                                     allow_abbrev=False)  # "--model" is not short for --models-dir
    parser.add_argument("--profile", default="demo", help="model set from the manifest whose base is scored (default demo)")
    parser.add_argument("--model", type=Path, help="your own base model (.gguf or .gguf.zst) instead of a profile: "
                                                   "prints τp for launch.py --model BASE --tau-p; writes nothing")
    # Numbers checked here, before minutes (hours on a 7B) of scoring, not after it
    parser.add_argument("--share", type=bounded(float, lambda v: 0 < v < 1, "a share is more than 0 and less than 1"),
                        default=0.5, help="share of prompts sent to the plain base (default 0.5)")
    parser.add_argument("--data", type=Path, default=DATA, help="JSON Lines with a text field")
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="model cache (default: $COGUMI_DATA_DIR/model-cache, as launch.py's)")
    parser.add_argument("--limit", type=_positive_int, default=None,
                        help="score only this many prompts (a big model on CPU)")
    parser.add_argument("--manifest", type=Path, default=None, help="manifest to read and update (default models/manifest.json)")
    parser.add_argument("--dry-run", action="store_true", help="print τp; do not write the manifest")
    args = parser.parse_args(argv)
    # A command-line entry point, so it may load the model itself; the router library does not.
    from app.chat import ChatSettings
    from launch import prepare_models
    from models.engine import Engine
    from models.errors import ContextOverflowError, ModelFileError
    from models.manifest import MANIFEST_PATH, get_profile, models_dir, user_profile
    from models.store import Store

    try:
        rows = read_jsonl(args.data, ("text",))
        manifest_path = args.manifest or MANIFEST_PATH
        profile = user_profile(args.model) if args.model else get_profile(args.profile, manifest_path)
        base = next(f for f in profile.files if f.role == "base")
        paths, _ = prepare_models(profile, Store(models_dir(args.models_dir)))
        engine = Engine(paths["base"], n_ctx=profile.settings.get("n_ctx", 4096))
    except (OSError, ValueError, KeyError, ModelFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    numbered = list(enumerate(rows, 1))
    if args.limit:
        numbered = [numbered[i] for i in np.random.default_rng(0).permutation(len(rows))[:args.limit]]
    settings = ChatSettings()
    signal = Perplexity(engine.score, max_tokens=settings.max_tokens)
    started = time.perf_counter()
    # A prompt that cannot be scored is left out and counted: one longer than the context ended the run
    # after every prompt before it was scored (hours on a 7B); an empty one scored perplexity 1.
    values, scored, too_long, empty = [], [], [], []
    for number, row in tqdm(numbered, desc="scoring", unit="prompt"):
        if not row["text"].strip():
            empty.append(number)
            continue
        try:
            values.append(signal.score(row["text"], [], settings.system_prompt))
        except ContextOverflowError:
            too_long.append(number)
            continue
        scored.append(row)
    rows = scored
    if not values:
        print(f"error: {args.data}: no prompt could be scored", file=sys.stderr)
        return 2
    tau = tau_for_share(values, args.share)
    print(f"{len(values)} prompts in {time.perf_counter() - started:.1f} s on {paths['base'].name}")
    left_out = [f"{len(numbers)} {why} ({'prompt' if len(numbers) == 1 else 'prompts'} "  # as numbered in the file
                f"{', '.join(map(str, numbers[:5]))}{', …' if len(numbers) > 5 else ''})"
                for numbers, why in ((too_long, "longer than the context"), (empty, "empty")) if numbers]
    if left_out:
        print("left out: " + ", ".join(left_out))
    print(f"{'label':<12}{'n':>6}{'p25':>10}{'median':>10}{'p75':>10}{'≤ τp':>8}")
    for label in (*DOMAINS, "all"):
        v = np.array([x for x, r in zip(values, rows) if label in ("all", r.get("label"))])
        if len(v):
            print(f"{label:<12}{len(v):>6}{np.quantile(v, .25):>10.2f}{np.median(v):>10.2f}"
                  f"{np.quantile(v, .75):>10.2f}{(v <= tau).mean():>8.0%}")
    reached, different = float(np.mean(np.array(values) <= tau)), different_prompts([r["text"] for r in rows])
    print(f"τp = {tau:.4f} sends {reached:.0%} of prompts to base (asked {args.share:.0%})"
          + (f": from {different} different, too few to write" if different < MIN_PROMPTS else ""))
    refused = refusal(values, [r["text"] for r in rows], args.share, args.dry_run)
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    if args.model:
        print(f"start with: python launch.py --model {args.model} --tau-p {tau:.4f}")
        return 0
    if args.dry_run:
        return 0
    manifest = json.loads(manifest_path.read_text())
    router = manifest["profiles"][profile.name].setdefault("settings", {}).setdefault("router", {})
    router.update({"tau_p": round(tau, 4), "tau_p_share": args.share, "tau_p_base_sha256": base.sha256})
    manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote settings.router.tau_p to {manifest_path} (profile {profile.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
