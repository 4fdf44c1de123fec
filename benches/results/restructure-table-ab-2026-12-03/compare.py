import json, statistics, sys, glob
rounds = sorted({int(f.split('-r')[-1].split('.')[0]) for f in glob.glob('/tmp/meas/full-before-r*.json')})
rows = {}
for r in rounds:
    try:
        b = json.load(open(f'/tmp/meas/full-before-r{r}.json')); a = json.load(open(f'/tmp/meas/full-after-r{r}.json'))
    except FileNotFoundError:
        continue
    bm = {x['id']: x for x in b['rows']}; am = {x['id']: x for x in a['rows']}
    for id_, x in bm.items():
        y = am.get(id_)
        if y is None or not x['ours'] or not y['ours']: continue
        rows.setdefault(id_, []).append((x['ours'], y['ours'], x['unit']))
print(f"rounds: {rounds}")
print(f"{'row':22} {'unit':10} {'before (median)':>16} {'after (median)':>15} {'after/before per round':>30} {'median':>7}")
for id_, v in rows.items():
    rat = [a / b for b, a, _ in v]
    print(f"{id_:22} {v[0][2]:10} {statistics.median(b for b,_,_ in v):16.4g} {statistics.median(a for _,a,_ in v):15.4g} {' '.join(f'{x:.2f}' for x in rat):>30} {statistics.median(rat):7.2f}")
