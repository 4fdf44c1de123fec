import json,glob,sys,statistics as st,collections,re
d=collections.defaultdict(list)
for f in glob.glob(sys.argv[1]+'/ab-*.json'):
    m=re.search(r'ab-(\w)-w(\d+)-r(\d)',f); lib,w,r=m.groups()
    j=json.load(open(f))
    for row in j['rows']:
        d[(row['id'],int(w),lib)]+=row['ours_samples']
names=dict(a=sys.argv[2],b=sys.argv[3])
for k in sorted(d):
    v=d[k]; print(f"{k[0]:16s} w{k[1]:<3d} {names[k[2]]:5s} n={len(v):2d} min {min(v):8.1f} med {st.median(v):8.1f} max {max(v):8.1f}")
