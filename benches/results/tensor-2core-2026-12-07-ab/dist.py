import json,glob,statistics as st,sys,random
tag=sys.argv[1]; libs=sys.argv[2:]
data={}
for lib in libs:
    s=[]
    for f in glob.glob(f'/tmp/abbench/{tag}-{lib}-r*.json'):
        s+=json.load(open(f))['rows'][0]['ours_samples']
    data[lib]=s
    s=sorted(s)
    print(tag, lib, len(s), 'q25', round(s[len(s)//4]), 'q50', round(st.median(s)), 'q75', round(s[3*len(s)//4]))
# paired per-round medians ratio vs first lib
base=libs[0]
for lib in libs[1:]:
    rs=[]
    for f in glob.glob(f'/tmp/abbench/{tag}-{lib}-r*.json'):
        r=f.rsplit('-r',1)[1].split('.')[0]
        a=json.load(open(f))['rows'][0]['ours']; b=json.load(open(f'/tmp/abbench/{tag}-{base}-r{r}.json'))['rows'][0]['ours']
        rs.append(a/b)
    rs.sort(); print(f'{lib}/{base} per-round median ratio: median {st.median(rs):.3f} q25 {rs[len(rs)//4]:.3f} q75 {rs[3*len(rs)//4]:.3f} n={len(rs)}')
