import sys,re,statistics as st,collections
d=collections.defaultdict(lambda: collections.defaultdict(list))
order=[]
for f in sys.argv[1:]:
    h=None
    for line in open(f):
        if line.startswith('-- '):
            m=re.match(r'-- (\S+) (.*?)\| (.*)',line.strip())
            lib,env,args=m.groups(); args=args.replace('--reps 5','').strip()
            key=(args+(' '+env.strip() if env.strip() else ''))
            h=(key,lib)
            if key not in order: order.append(key)
        elif h and re.match(r'^\s+[0-9]',line):
            v=[float(x) for x in line.split()]
            d[h[0]][h[1]].append(v)
for k in order:
    print(k)
    for lib,rows in d[k].items():
        w=[r[0] for r in rows]; b=[r[6] for r in rows]; pc=[r[2] for r in rows]; wc=[r[3] for r in rows]; ran=[r[4] for r in rows]; sl=[r[5] for r in rows]
        print(f"   {lib:6s} n={len(w):2d} ns/item min {min(w):6.1f} med {st.median(w):6.1f} max {max(w):6.1f} | batch med {st.median(b):5.1f} | prod_cpu {st.median(pc):6.1f} work_cpu {st.median(wc):6.1f} ran {st.median(ran):4.1f} slices/b {st.median(sl):5.2f}")
