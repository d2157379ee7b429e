import json, os, sys
sys.path.insert(0, os.path.join(os.environ['LIMO_REPO'], 'eval'))
from utils.parser import strip_string
from collections import defaultdict
g=defaultdict(list)
for l in open('disagreements.jsonl'):
    d=json.loads(l)
    if d['py_extracted']=='' and 'boxed' not in d['prediction']:
        key='EXTRACTION: no \\boxed'
    else:
        key=(d['note'].split(' [')[0] if not d['source'].startswith(('limo','tricky')) else d['source'])
    g[d['kind']+' | '+key].append(d)
for k,v in sorted(g.items(), key=lambda kv:-len(kv[1])):
    print('##',k,len(v))
    for d in v[:int(sys.argv[1]) if len(sys.argv)>1 else 5]:
        pe=d['py_extracted']
        print('   ', d['id'], json.dumps(pe,ensure_ascii=False)[:70], '->', json.dumps(strip_string(pe) if pe is not None else None,ensure_ascii=False)[:50], '| ref', json.dumps(d['reference'],ensure_ascii=False)[:60],'->',json.dumps(strip_string(d['reference']),ensure_ascii=False)[:50])
