import json,re,sys,collections
html=open(sys.argv[1]).read()
m=re.search(r'const UNIT_DATA = (\[.*?\]);\n',html,re.S)
units=json.loads(m.group(1))
total=sum(u['duration'] for u in units)
end=max(u['start']+u['duration'] for u in units)
groups=collections.Counter()
for u in units:
    n=u['name']
    g='polars' if n.startswith('polars') else 'sqlparser' if n.startswith('sqlparser') else 'arrow+parquet' if n.startswith('arrow') or n=='parquet' else 'ours' if n.startswith('p11') or n in('p11count',) else 'other'
    groups[g]+=u['duration']
print(f"wall {end:.0f} s, sum of units {total:.0f} s, units {len(units)}")
for g,d in groups.most_common(): print(f"  {g}: {d:.0f} s")
for u in sorted(units,key=lambda u:-u['duration'])[:25]:
    print(f"  {u['name']} {u.get('target','')} {u['duration']:.0f}")
