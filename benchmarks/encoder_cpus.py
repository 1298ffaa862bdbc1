"""Does the router read the same on an x86 CPU without VNNI? Its int8 encoder, emulated there.

ONNX Runtime multiplies the encoder's int8 weights by u8 inputs with VNNI where the CPU has it (this
VM, Intel since 2019, AMD since Zen 4) and otherwise with AVX2 (older laptops and desktops, AMD Zen
1-3, many cloud CPUs), whose vpmaddubsw adds pairs of products in 16 bits and saturates: ONNX
Runtime's documentation gives that as the reason for its reduce_range option. The router's heads were
trained on this VM's encodes. Here the texts of blind sets are encoded three ways, each text alone as
the app does: natively, under qemu-user as a CPU without VNNI (--cpu, default Haswell: AVX2, no
AVX-512), and by float32 MiniLM; then both heads score them.

    apt-get install qemu-user     # once (Debian)
    .venv/bin/python benchmarks/encoder_cpus.py [--escalation-sets 158 159] [--domain-sets 104] [--cpu Haswell]

About 13 minutes on 2 cores for the default sets (emulation runs the encoder ~150x slower). Prints
each layer's mean and worst cosine to float32, then the heads' figures per way; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SETS = ROOT / "benchmarks" / "data"


def encode_alone(onnx_path: str, tokenizer_path: str, texts_path: str, out_path: str) -> None:
    """Embedder._encode's arithmetic with nothing but ONNX Runtime and the tokenizer, so it starts in
    seconds under emulation (no torch): each text alone, every layer's token states averaged, unit length."""
    import onnxruntime
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"],
                                           disabled_optimizers=["SkipLayerNormFusion"])  # as the Embedder
    texts = json.loads(Path(texts_path).read_text())
    rows = []
    for text in texts:
        ids = tokenizer.encode(text[:2000]).ids  # Embedder.max_chars
        means = session.run(None, {"input_ids": np.array([ids], np.int64)})[0].mean(axis=2)[:, 0]
        rows.append(means / np.linalg.norm(means, axis=-1, keepdims=True))
    np.save(out_path, np.array(rows, np.float32))


def float32_layers(embedder, texts: list[str]) -> np.ndarray:
    """The same means from MiniLM's own float32 weights in torch: the reference both int8 ways approximate."""
    import torch

    from router.embeddings import MIDDLE_LAYERS

    bert = embedder.model[0].auto_model.eval()
    rows = []
    with torch.no_grad():
        for ids in embedder.token_ids(texts):
            states = bert(input_ids=torch.tensor([ids]), output_hidden_states=True, return_dict=False)[-1]
            means = torch.stack(states[1:MIDDLE_LAYERS + 2])[:, 0].mean(dim=1).numpy()
            rows.append(means / np.linalg.norm(means, axis=-1, keepdims=True))
    return np.array(rows, np.float32)


class Precomputed:
    """Embedder.layers and .encode from layers computed beforehand, for router.evaluate."""

    def __init__(self, texts: list[str], layers: np.ndarray):
        self.index, self._layers = {t: i for i, t in enumerate(texts)}, layers

    def layers(self, texts):
        return self._layers[[self.index[t] for t in texts]]

    def encode(self, texts):
        return self.layers(texts)[:, -1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--escalation-sets", nargs="*", type=int, default=[158, 159])
    parser.add_argument("--domain-sets", nargs="*", type=int, default=[104])
    parser.add_argument("--cpu", default="Haswell", help="qemu CPU model without VNNI (qemu-x86_64 -cpu help)")
    parser.add_argument("--encode", nargs=4, help=argparse.SUPPRESS)  # the child: ONNX TOKENIZER TEXTS OUT
    args = parser.parse_args()
    if args.encode:
        encode_alone(*args.encode)
        return
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        sys.exit("qemu-x86_64 not found: install it (Debian: apt-get install qemu-user), then run this again")
    sys.path.insert(0, str(ROOT))
    from router.decision import Thresholds
    from router.domain import DomainClassifier
    from router.embeddings import Embedder
    from router.escalation import EscalationDetector
    from router.evaluate import evaluate_domain, evaluate_escalation, read_jsonl

    escalation = [r for n in args.escalation_sets for r in read_jsonl(
        SETS / f"router_eval_blind{n}" / "escalation.jsonl", ("previous_answer", "text", "label"))]
    domain = [r for n in args.domain_sets for r in read_jsonl(SETS / f"router_eval_blind{n}" / "domain.jsonl",
                                                            ("text", "label"))]
    texts = list(dict.fromkeys([r["text"] for r in escalation + domain] +
                               [r["previous_answer"] for r in escalation if r["previous_answer"]]))
    embedder = Embedder(cache_size=len(texts) + 1)
    layers = {}
    with tempfile.TemporaryDirectory(prefix="cogumi-encoder-cpus-") as tmp:
        tokenizer, texts_file = Path(tmp) / "tokenizer.json", Path(tmp) / "texts.json"
        tokenizer.write_text(embedder._tokenizer.to_str())
        texts_file.write_text(json.dumps(texts))
        for way, prefix in (("native", []), (f"{args.cpu} (emulated)", [qemu, "-cpu", args.cpu])):
            out, started = Path(tmp) / "layers.npy", time.perf_counter()
            subprocess.run([*prefix, sys.executable, __file__, "--encode", str(embedder.encoder_path), str(tokenizer),
                            str(texts_file), str(out)], check=True, stderr=subprocess.DEVNULL)
            layers[way] = np.load(out)
            print(f"encoded {len(texts)} texts {way} in {time.perf_counter() - started:.0f} s", flush=True)
    # the child's encodes are the app's own (the same session options and arithmetic)
    assert np.allclose(layers["native"], embedder.layers(texts), atol=1e-6), "the native child differs from Embedder"
    layers["float32"] = float32_layers(embedder, texts)

    tau_e = Thresholds().tau_e
    detector, classifier = EscalationDetector(), DomainClassifier()
    report = {}
    print(f"\n{len(texts)} texts: cosine to float32 MiniLM per layer (1..6, 6 = the sentence embedding), mean / worst")
    for way, values in layers.items():
        cosine = (values * layers["float32"]).sum(axis=-1)
        embedder_like = Precomputed(texts, values)
        report[way] = {"cosine_mean": cosine.mean(axis=0).round(5).tolist(), "cosine_worst": cosine.min(axis=0).round(4).tolist(),
                       "escalation": evaluate_escalation(escalation, embedder_like, detector, tau_e) if escalation else None,
                       "domain": evaluate_domain(domain, embedder_like, classifier) if domain else None}
        print(f"{way:<20}" + "  ".join(f"{m:.4f}/{w:.3f}" for m, w in zip(report[way]["cosine_mean"],
                                                                          report[way]["cosine_worst"])))
    print(f"\nheads on the same rows (escalation sets {args.escalation_sets}, {len(escalation)} rows, τe {tau_e}; "
          f"domain sets {args.domain_sets}, {len(domain)} rows)")
    print(f"{'way':<20}{'esc. F1':>9}{'FPR':>8}{'domain macro-F1':>17}")
    for way, r in report.items():
        esc, dom = r["escalation"] or {}, r["domain"] or {}
        print(f"{way:<20}{esc.get('f1', float('nan')):>9.4f}{esc.get('fpr', float('nan')):>8.4f}"
              f"{dom.get('macro_f1', float('nan')):>17.4f}")
    print(json.dumps({way: {"escalation": r["escalation"], "domain_macro_f1": (r["domain"] or {}).get("macro_f1"),
                            "last_layer_cosine_mean": r["cosine_mean"][-1]} for way, r in report.items()}))


if __name__ == "__main__":
    main()
