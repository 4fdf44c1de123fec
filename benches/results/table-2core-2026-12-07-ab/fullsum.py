import json,glob,statistics as st,sys
tags=sys.argv[1:] or ['full','full2']
runs={}
for tag in tags:
    for f in glob.glob(f'/tmp/abbench/{tag}-*-r*.json'):
        lib=f.split(f'{tag}-')[1].rsplit('-r',1)[0]; r=tag+f.rsplit('-r',1)[1].split('.')[0]
        runs.setdefault(r,{})[lib]={x['id']:x for x in json.load(open(f))['rows']}
ids=[x for x in next(iter(runs.values()))['lib_head']]
print(f"{'row':22s} {'unit':8s} {'e206bba (min/med/max)':>26s} {'head (min/med/max)':>26s}  ratio head/base per round: median [min-max]   head ratio-to-baseline med")
for i in ids:
    b=[runs[r]['libB'][i]['ours'] for r in runs if i in runs[r]['libB']]
    h=[runs[r]['lib_head'][i]['ours'] for r in runs if i in runs[r]['lib_head']]
    rat=[runs[r]['lib_head'][i]['ours']/runs[r]['libB'][i]['ours'] for r in runs if runs[r]['libB'][i]['ours']]
    hr=[runs[r]['lib_head'][i].get('ratio') for r in runs if runs[r]['lib_head'][i].get('ratio') is not None]
    br=[runs[r]['libB'][i].get('ratio') for r in runs if runs[r]['libB'][i].get('ratio') is not None]
    u=runs[next(iter(runs))]['lib_head'][i]['unit']
    f=lambda v: f"{min(v):7.1f}/{st.median(v):7.1f}/{max(v):7.1f}"
    print(f"{i:22s} {u:8s} {f(b):>26s} {f(h):>26s}  {st.median(rat):5.2f} [{min(rat):.2f}-{max(rat):.2f}]   " + (f"head {st.median(hr):.2f} (base {st.median(br):.2f})" if hr else ''))
