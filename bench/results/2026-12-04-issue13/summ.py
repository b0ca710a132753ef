import sys,statistics,collections
rows=collections.defaultdict(list)
for line in open(sys.argv[1]):
    p=line.rstrip('\n').split('\t')
    if len(p)!=5: continue
    rows[p[0]].append((float(p[1]),float(p[2])+float(p[3]),int(p[4])))
sizes={'corpus':67567500,'threads27':67161498,'p11kit':67110188}
for k,v in rows.items():
    w=[x[0] for x in v]; c=[x[1] for x in v]; m=max(x[2] for x in v)
    extra=''
    for f,s in sizes.items():
        if k.startswith('import-'+f+'-'):
            extra=f"  {s/1e6/statistics.median(w):.0f} MB/s ({s/1e6/max(w):.0f}–{s/1e6/min(w):.0f}), {s/1e6/statistics.median(c):.0f} MB/CPU-s"
    print(f"{k:24} n={len(v)} wall {statistics.median(w):.2f} ({min(w):.2f}–{max(w):.2f}) cpu {statistics.median(c):.2f} ({min(c):.2f}–{max(c):.2f}) rss {m/1024:.0f} MiB{extra}")
