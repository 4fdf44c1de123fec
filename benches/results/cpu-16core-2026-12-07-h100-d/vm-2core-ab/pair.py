import json, sys, statistics as st
tag, a, b, R = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
d = sys.argv[5] if len(sys.argv) > 5 else "/tmp/abbench"
rows = {}
for r in range(1, R+1):
    for lib in (a, b):
        for row in json.load(open(f'{d}/{tag}-{lib}-r{r}.json'))['rows']:
            rows.setdefault(row['id'], {}).setdefault(lib, []).append(st.median(row['ours_samples']))
for rid, d in rows.items():
    ratios = [y / x for x, y in zip(d[a], d[b])]
    print(f"{rid:16s} {a} {st.median(d[a]):7.1f}  {b} {st.median(d[b]):7.1f}  per-round ratio {b}/{a}: median {st.median(ratios):.3f}  [{' '.join(f'{x:.2f}' for x in ratios)}]")
