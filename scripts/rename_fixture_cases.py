#!/usr/bin/env python3
"""Copy a fixture root with every case renamed.

usage: rename_cases.py SRC DST [--extra-output FOLDER:CASE:NAME]

cases.json keys (or `name` fields), their `file`s (`case_<name>.safetensors` ->
`case_<new>.safetensors`, `<name>.safetensors` -> `<new>.safetensors`) and `{"from": "<file>:..."}`
references are renamed consistently; tensor files and everything else are symlinks to the
originals. `--extra-output` lists an output the case does not hold (a test must fail on it).
"""
import json, os, shutil, sys

src, dst = sys.argv[1], sys.argv[2]
extra = [a.split(':') for a in sys.argv[4::2]] if len(sys.argv) > 3 else []
if os.path.exists(dst):
    shutil.rmtree(dst)
os.makedirs(dst)

def new_name(name):
    return 'zz_' + name[::-1] + '_renamed'

def link(a, b):
    os.symlink(os.path.abspath(a), b)

for entry in sorted(os.listdir(src)):
    s = os.path.join(src, entry)
    d = os.path.join(dst, entry)
    if not os.path.isdir(s) or not os.path.exists(os.path.join(s, 'cases.json')):
        link(s, d)
        continue
    os.makedirs(d)
    cases = json.load(open(os.path.join(s, 'cases.json')))
    renamed_files = {}

    def rename_case(name, spec):
        new = new_name(name)
        f = spec.get('file')
        if f:
            base = os.path.basename(f)
            nf = base.replace(name, new) if name in base else 'renamed_' + base
            assert nf != base
            renamed_files[f] = os.path.join(os.path.dirname(f), nf)
            spec['file'] = renamed_files[f]
        return new

    if entry == 'tokenizers':
        q = cases['qwen']['cases']
        cases['qwen']['cases'] = {new_name(k): v for k, v in q.items()}
    elif isinstance(cases.get('cases'), dict):
        cases['cases'] = {rename_case(k, v): v for k, v in cases['cases'].items()}
    elif isinstance(cases.get('cases'), list):
        for c in cases['cases']:
            c['name'] = rename_case(c['name'], c)
        for c in cases['cases']:
            for inp in c.get('inputs', {}).values():
                if isinstance(inp, dict) and 'from' in inp:
                    f, t = inp['from'].split(':')
                    inp['from'] = renamed_files[f] + ':' + t
    for folder, case, output in extra:
        if folder != entry:
            continue
        c = cases['cases'][new_name(case)] if isinstance(cases['cases'], dict) else \
            next(x for x in cases['cases'] if x['name'] == new_name(case))
        c['outputs'][output] = {'shape': [1], 'dtype': 'float32'}
    json.dump(cases, open(os.path.join(d, 'cases.json'), 'w'), indent=1)
    for f in os.listdir(s):
        if f == 'cases.json':
            continue
        target = renamed_files.get(f, f)
        link(os.path.join(s, f), os.path.join(d, target))
print('written', dst)
