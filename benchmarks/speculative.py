"""Speculative decoding, measured (docs: src/cactus/speculative.py).

1. The demo model, greedy, with and without prompt-lookup speculation, alternated run by run: a
   turn that repeats code already in the conversation (a request asked again, after the model's own
   answer to it: an agent rewriting the function it wrote), and one that repeats nothing. Decode tok/s,
   the speed-up, the acceptance rate (drafted tokens the answer took), and that the answers match.
2. Synthetic shapes: `verify_cost` (one forward over K tokens in decode steps, as `cactus bench
   --verify K` measures it) and the speed-up it implies at per-token acceptance rates 0.3 / 0.6 /
   0.9: a verification of K-1 drafts yields (1 - a^K) / (1 - a) tokens for verify_cost(K) steps,
   at the best K.

    python benchmarks/speculative.py [--runs 5] [--shapes lfm2-350m:int4,lfm2-1.2b:int8] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

ASK = "Write a Python function to do binary search in a sorted list."
TURNS = {  # "repeats code": the request again, the function the model wrote for it in the conversation
    "repeats code": lambda first: [{"role": "user", "content": ASK}, {"role": "assistant", "content": first},
                                   {"role": "user", "content": ASK}],
    "repeats nothing": lambda first: [{"role": "user", "content": "Tell me about the weather and the seasons in "
                                                                  "Paris."}],
}


def demo_turns(runs: int, max_tokens: int) -> dict:
    from cactus.api import Model
    from cactus.demo import demo_path
    from cactus.generate import collect, generate
    from cactus.sampling import SamplingOptions

    out = {}
    with Model(demo_path()) as m:
        first = m.complete([{"role": "user", "content": ASK}], temperature=0, max_tokens=max_tokens,
                           speculative="off").response
        for name, turn in TURNS.items():
            prompt = m.prompt_ids(turn(first))
            tps, answers, acc = {"off": [], "prompt": []}, {}, []
            for _ in range(runs):
                for mode in ("off", "prompt"):
                    m.session.reset()
                    m.session.prefill(prompt)  # prefill outside the timing: decode is what changes
                    opts = SamplingOptions(max_tokens=max_tokens, speculative=mode)
                    g = collect(generate(m.session, m.tokenizer, prompt, opts, stop_ids=m.stop_ids))
                    ids, f = g.token_ids, g.finish
                    tps[mode].append(f.decode_tokens / f.decode_s)
                    answers[mode] = ids
                    if mode == "prompt":
                        acc.append((f.accepted_tokens, f.drafted_tokens, f.decode_tokens))
            med = statistics.median
            a, d, n = acc[0]
            out[name] = {"decode_tps_off": med(tps["off"]), "decode_tps_prompt": med(tps["prompt"]),
                         "speedup": med(p / o for p, o in zip(tps["prompt"], tps["off"], strict=True)),
                         "accepted": a, "drafted": d, "tokens": n,
                         "acceptance": a / d if d else None, "from_drafts": a / n,
                         "same_answer": answers["off"] == answers["prompt"]}
    return out


def implied(cost: dict[int, float], rate: float) -> tuple[float, int]:
    """(speed-up, K) at the best K: tokens per verification over its cost."""
    return max(((1 - rate ** k) / (1 - rate) / c, k) for k, c in cost.items())


def synthetic(shapes: list[str], ks: list[int]) -> dict:
    out = {}
    for item in shapes:
        name, quant = item.split(":")
        cost = {1: 1.0}
        for k in ks:
            r = subprocess.run([sys.executable, "-m", "cactus.bench", "--synthetic", name, "--quant", quant, "--prompt",
                                "256", "--gen", "4", "--runs", "1", "--verify", str(k), "--json"],
                               capture_output=True, text=True, check=True)
            cost[k] = json.loads(r.stdout)["verify_cost"]
        out[item] = {"verify_cost": cost, **{f"speedup_at_{a}": implied(cost, a) for a in (0.3, 0.6, 0.9)}}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--shapes", default="lfm2-350m:int4,lfm2-1.2b:int8")
    p.add_argument("--ks", default="2,4,8")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    res = {"demo": demo_turns(a.runs, a.max_tokens),
           "synthetic": synthetic([s for s in a.shapes.split(",") if s], [int(k) for k in a.ks.split(",")])}
    if a.json:
        print(json.dumps(res, indent=1))
        return
    print("| demo turn | decode tok/s off | prompt lookup | speed-up | drafts taken | tokens from drafts "
          "| same answer |")
    print("|---|---|---|---|---|---|---|")
    for name, r in res["demo"].items():
        acc = "-" if r["acceptance"] is None else f"{r['accepted']}/{r['drafted']} ({100 * r['acceptance']:.0f}%)"
        print(f"| {name} | {r['decode_tps_off']:.0f} | {r['decode_tps_prompt']:.0f} | x{r['speedup']:.2f} | {acc} | "
              f"{100 * r['from_drafts']:.0f}% | {r['same_answer']} |")
    if not res["synthetic"]:
        return
    print()
    ks = sorted(next(iter(res["synthetic"].values()))["verify_cost"])
    print("| shape | verify_cost K=" + " / ".join(map(str, ks)) + " | implied x at a=0.3 | 0.6 | 0.9 |")
    print("|---|---|---|---|---|")
    for name, r in res["synthetic"].items():
        costs = " / ".join(f"{c:.2f}" for _, c in sorted(r["verify_cost"].items()))
        cells = " | ".join(f"x{s:.2f} (K={k})" for s, k in (r[f"speedup_at_{a}"] for a in (0.3, 0.6, 0.9)))
        print(f"| {name} | {costs} | {cells} |")


if __name__ == "__main__":
    main()
