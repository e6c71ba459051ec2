"""Language identification for `language: "auto"`: each candidate library on short sentences in XTTS's
17 languages (scripts/langid_sentences.py): accuracy, time per segment, installed size, and how many it
was unsure of (docs/language-detection.md).

Each candidate runs in a process of its own, so one's imports and memory do not weigh on another's:
    python scripts/bench_langid.py [--site DIR ...] [--json OUT]
--site adds a folder a candidate was installed into (`pip install --target DIR pkg`) to the path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from langid_sentences import SENTENCES  # noqa: E402

LANGS = list(SENTENCES)
CANDIDATES = {
    "lingua": "lingua-language-detector",
    "lingua-low": "lingua-language-detector",
    "py3langid": "py3langid",
    "langid": "langid",
    "langdetect": "langdetect",
    "pycld2": "pycld2",
    "gcld3": "gcld3",
}


def _lingua(low_accuracy: bool = False):
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    wanted = {getattr(IsoCode639_1, code.split("-")[0].upper()): code for code in LANGS}
    languages = [Language.from_iso_code_639_1(iso) for iso in wanted]
    builder = LanguageDetectorBuilder.from_languages(*languages).with_preloaded_language_models()
    detector = (builder.with_low_accuracy_mode() if low_accuracy else builder).build()

    def detect(text):
        values = detector.compute_language_confidence_values(text)
        top = values[0]
        return wanted[top.language.iso_code_639_1], top.value

    return detect


def _langid_like(module_name):
    def build():
        if module_name == "py3langid":
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            # 0.2.x (numpy<2 resolves with it) loads a pickled model; 0.3 and later, an .npz one.
            load = getattr(LanguageIdentifier, "from_pickled_model", None) or LanguageIdentifier.from_model_file
            identifier = load(MODEL_FILE, norm_probs=True)
        else:
            from langid.langid import LanguageIdentifier, model

            identifier = LanguageIdentifier.from_modelstring(model, norm_probs=True)
        identifier.set_languages([code.split("-")[0] for code in LANGS])

        def detect(text):
            code, prob = identifier.classify(text)
            return ("zh-cn" if code == "zh" else code), float(prob)

        return detect

    return build


def _langdetect():
    from langdetect import DetectorFactory, detect_langs

    DetectorFactory.seed = 0

    def detect(text):
        top = detect_langs(text)[0]
        code = top.lang if top.lang != "zh-tw" else "zh-cn"
        return code, top.prob

    return detect


def _pycld2():
    import pycld2

    def detect(text):
        reliable, _, details = pycld2.detect(text)
        code = details[0][1]
        code = "zh-cn" if code.startswith("zh") else code
        return code, details[0][2] / 100 if reliable else 0.0

    return detect


def _gcld3():
    import gcld3

    detector = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)

    def detect(text):
        result = detector.FindLanguage(text=text)
        code = "zh-cn" if result.language.startswith("zh") else result.language
        return code, result.probability

    return detect


BUILDERS = {
    "lingua": _lingua, "lingua-low": lambda: _lingua(low_accuracy=True), "py3langid": _langid_like("py3langid"), "langid": _langid_like("langid"),
    "langdetect": _langdetect, "pycld2": _pycld2, "gcld3": _gcld3,
}


def installed_mb(dist: str) -> float:
    files = metadata.distribution(dist).files or []
    return sum(f.locate().stat().st_size for f in files if f.locate().exists()) / 2**20


def measure(name: str, threshold: float) -> dict:
    started = time.perf_counter()
    detect = BUILDERS[name]()
    detect("Warm up.")
    load_s = time.perf_counter() - started
    right = unsure = wrong_sure = 0
    times, per_language, misses = [], {}, []
    for code, sentences in SENTENCES.items():
        for sentence in sentences:
            t0 = time.perf_counter()
            found, confidence = detect(sentence)
            times.append(time.perf_counter() - t0)
            ok = found == code
            right += ok
            per_language[code] = per_language.get(code, 0) + ok
            if confidence < threshold:
                unsure += 1
            elif not ok:
                wrong_sure += 1
            if not ok:
                misses.append(f"{code}->{found} ({confidence:.2f}): {sentence}")
    total = sum(len(s) for s in SENTENCES.values())
    rss_mb = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return {
        "library": name, "package": CANDIDATES[name], "version": metadata.version(CANDIDATES[name]),
        "accuracy": right / total, "sentences": total, "unsure": unsure, "wrong_when_sure": wrong_sure,
        "threshold": threshold,
        "median_ms": statistics.median(times) * 1000, "p90_ms": sorted(times)[int(0.9 * len(times))] * 1000,
        "load_s": load_s, "installed_mb": installed_mb(CANDIDATES[name]), "process_rss_mb": rss_mb,
        "per_language": per_language, "misses": misses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", action="append", default=[], help="a folder a candidate was installed into")
    parser.add_argument("--only", help="measure this candidate in this process (used by the driver)")
    parser.add_argument("--threshold", type=float, default=0.5, help="below this confidence a result is unsure")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.only:
        print(json.dumps(measure(args.only, args.threshold)))
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*args.site, os.environ.get("PYTHONPATH", "")])}
    results = []
    for name in CANDIDATES:
        run = subprocess.run([sys.executable, __file__, "--only", name, "--threshold", str(args.threshold)],
                             capture_output=True, text=True, env=env)
        if run.returncode != 0:
            print(f"{name}: not measured ({run.stderr.strip().splitlines()[-1] if run.stderr.strip() else run.returncode})")
            continue
        result = json.loads(run.stdout)
        results.append(result)
        print(f"{name:11} {result['accuracy']:6.1%}  unsure {result['unsure']:3}  wrong-when-sure {result['wrong_when_sure']:3}  "
              f"{result['median_ms']:6.2f} ms median  {result['p90_ms']:6.2f} ms p90  load {result['load_s']:5.2f} s  "
              f"{result['installed_mb']:6.1f} MB installed  {result['process_rss_mb']:5.0f} MB RSS")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
