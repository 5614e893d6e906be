import json, sys, glob, statistics, collections
dirs = sys.argv[1:]
acc = collections.defaultdict(list)
for d in dirs:
    for f in glob.glob(f"{d}/runs/*.json"):
        r = json.load(open(f))
        if r["variant"] not in ("dqt",) and d.endswith("evidence") : continue
        key = (r["dataset"], ("base:" if d.endswith("evidence") else "") + r["variant"])
        row = {x["mode"].split()[1].split("-")[0]: x["accuracy"] for x in r["rows"] if x["mode"].startswith("static")}
        for s in r.get("sweep", []):
            row[f"d{s['budget_bits']}"] = s["accuracy"]; row[f"x{s['budget_bits']}"] = s["bitops_vs_uniform4"]; row[f"sp{s['budget_bits']}"]=s["spread"]
        row["sec"] = r["seconds"]; row["seed"] = r["seed"]
        import os
        if os.environ.get("SEEDS") and str(r["seed"]) not in os.environ["SEEDS"].split(","): continue
        acc[key].append(row)
cols = ["8","7","6","5","4","3","2","d2.5","d3.0","d3.5","d4.0","d5.0","d6.0","x3.5","x4.0","sp4.0","sec"]
print(f"{'dataset/variant':28s} n " + " ".join(f"{c:>6s}" for c in cols))
for key in sorted(acc):
    rows = acc[key]
    vals = []
    for c in cols:
        v = [r[c] for r in rows if c in r]
        m = statistics.fmean(v) if v else float("nan")
        vals.append(f"{m*100 if not c.startswith(('x','sp','sec')) else m:6.1f}" if not c.startswith(('x','sp')) else f"{m:6.2f}")
    print(f"{key[0]+'/'+key[1]:28s} {len(rows)} " + " ".join(vals))
