#!/usr/bin/env python3
"""Re-check the BuildKit cache-key vectors in this directory (stdlib only).

For every <vector>/debug.json record:
  * no skipped bytes: sha256(base64-decode(data_b64)) must equal the digest;
  * skipped bytes (TypeFile records of regular files, whose content BuildKit hashes
    without recording it): the pre-image is rebuilt from the frames, filling the skip
    with the content of a file of the same size from <vector>/context or
    local-include/context (or a literal from EXTRA); records whose content is not at hand
    (fileops: busybox files from the image) are counted as "not checkable here".
For every vector with an exported cache: sha256(manifest.json) must equal the digest in
index.json and sha256(cacheconfig.json) the manifest's config digest.
Exit status 1 on any mismatch.
"""
import base64
import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# file contents known from the Definition itself (exec outputs), per vector
EXTRA = {'parallel4': [b'1\n', b'2\n', b'3\n', b'4\n']}


def fixture_contents(*dirs):
    out = []
    for d in dirs:
        for root, _, files in os.walk(d):
            for f in files:
                p = os.path.join(root, f)
                if os.path.isfile(p) and not os.path.islink(p):
                    with open(p, 'rb') as fh:
                        out.append(fh.read())
    return out


def sha(b):
    return 'sha256:' + hashlib.sha256(b).hexdigest()


def main():
    bad = 0
    total = checked = content_checked = not_checkable = 0
    for name in sorted(os.listdir(HERE)):
        vdir = os.path.join(HERE, name)
        dbg = os.path.join(vdir, 'debug.json')
        if not os.path.isfile(dbg):
            continue
        cands = fixture_contents(os.path.join(vdir, 'context'),
                                 os.path.join(HERE, 'local-include', 'context')) + EXTRA.get(name, [])
        with open(dbg, 'rb') as fh:
            recs = json.load(fh)
        digests = [r['digest'] for r in recs]
        if digests != sorted(digests) or len(set(digests)) != len(digests):
            print(f'{name}: records not sorted/unique'); bad += 1
        for r in recs:
            total += 1
            data = base64.b64decode(r['data_b64'])
            if r.get('data') is not None and r['data'].encode() != data:
                print(f'{name}: {r["digest"]} data != data_b64'); bad += 1
            if 'skipped_bytes' not in r:
                if sha(data) == r['digest']:
                    checked += 1
                else:
                    print(f'{name}: {r["digest"]} ({r["type"]}) pre-image mismatch'); bad += 1
                continue
            ok = False
            for c in (c for c in cands if len(c) == r['skipped_bytes']):
                buf, pos, dpos = b'', 0, 0
                for f in r['frames']:
                    if f['kind'] == 'data':
                        buf += data[dpos:dpos + f['len']]; dpos += f['len']
                    else:
                        buf += c[pos:pos + f['len']]; pos += f['len']
                if sha(buf) == r['digest']:
                    ok = True
                    break
            if ok:
                content_checked += 1
            else:
                not_checkable += 1
        idx = os.path.join(vdir, 'index.json')
        if os.path.isfile(idx):
            with open(idx, 'rb') as fh:
                index = json.load(fh)
            with open(os.path.join(vdir, 'manifest.json'), 'rb') as fh:
                mdt = fh.read()
            with open(os.path.join(vdir, 'cacheconfig.json'), 'rb') as fh:
                cdt = fh.read()
            if sha(mdt) != index['manifests'][0]['digest']:
                print(f'{name}: manifest.json digest mismatch'); bad += 1
            mf = json.loads(mdt)
            if sha(cdt) != mf['config']['digest'] or len(cdt) != mf['config']['size']:
                print(f'{name}: cacheconfig.json digest/size mismatch'); bad += 1
    print(f'records={total} verified={checked} verified_with_fixture_content={content_checked} '
          f'not_checkable_here={not_checkable} problems={bad}')
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
