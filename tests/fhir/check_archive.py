#!/usr/bin/env python3
"""Checks HealthSense archives with tools the project did not write.

Uses none of the project's code: only the documented formats
(docs/ARCHIVE.md, docs/CONTRACT.md) and third-party packages
(tests/fhir/requirements.txt, installed into .tools/venv by scripts/setup).

Two modes:

  check_archive.py bundle FILE.json...
      validates every resource of each FHIR bundle with fhir.resources
      (R4 4.0.1 models) and with HL7's FHIR R4 JSON schema (fhir.schema.json).

  check_archive.py sealed --key-file K --chain-id N --contract 0x.. --patient 0x..
                          --rpc URL (--cid CID --ipfs URL | --file F)
      fetches the sealed archive (IPFS by CID, or a file), decrypts it with
      the patient key (ChaCha20-Poly1305, associated data as the docs say),
      decompresses it (zstd), checks its keccak256 against the record hash on
      chain (getArchive), validates it as above, and re-checks the first
      reading of the full series: its leaf (OpenZeppelin StandardMerkleTree
      leaf of the ABI-encoded reading) and Merkle proof against the root the
      chain holds for its batch (batchRoot), and the contract's own
      verifyReading.

Exit 0 when everything holds; 1 with the reasons otherwise.
"""

import argparse
import base64
import json
import os
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SCHEMA = os.path.join(ROOT, ".tools", "node_modules", "@asymmetrik", "fhir-json-schema-validator", "fhir.schema.json")
MAGIC = b"HSARCH1\0"
SERIES_TYPE = "application/vnd.healthsense.readings.v1"


def keccak(data: bytes) -> bytes:
    from Crypto.Hash import keccak as k

    h = k.new(digest_bits=256)
    h.update(data)
    return h.digest()


# ---------------------------------------------------------------- validation


def schema_validators():
    import jsonschema

    with open(SCHEMA) as f:
        schema = json.load(f)
    definitions = schema["definitions"]
    cache = {}

    def validator(resource_type):
        if resource_type not in cache:
            sub = {"$ref": f"#/definitions/{resource_type}", "definitions": definitions}
            cache[resource_type] = jsonschema.Draft6Validator(sub)
        return cache[resource_type]

    return validator


def validate_bundle(bundle, name):
    """Returns a list of problems (empty when valid)."""
    from fhir.resources import construct_fhir_element

    problems = []
    validator = schema_validators()
    if bundle.get("resourceType") != "Bundle":
        return [f"{name}: not a Bundle"]
    # The Bundle's own elements against the schema; each resource against
    # its own definition (the schema's `ResourceList` oneOf would try all
    # 147 resource types per entry).
    shell = dict(bundle, entry=[{"fullUrl": "urn:x"}] if bundle.get("entry") else [])
    for e in validator("Bundle").iter_errors(shell):
        problems.append(f"{name}: Bundle: schema: {e.message} at {list(e.absolute_path)}")
    counts = {}
    for i, entry in enumerate(bundle.get("entry", [])):
        r = entry.get("resource", {})
        t = r.get("resourceType", "?")
        counts[t] = counts.get(t, 0) + 1
        where = f"{name}: entry {i} {t}/{r.get('id')}"
        if set(entry) != {"resource"}:
            problems.append(f"{where}: entry has {sorted(entry)}")
        for e in validator(t).iter_errors(r):
            problems.append(f"{where}: schema: {e.message[:200]} at {list(e.absolute_path)}")
        try:
            construct_fhir_element(t, r)
        except Exception as e:  # pydantic's ValidationError and LookupError
            problems.append(f"{where}: fhir.resources: {str(e)[:400]}")
    try:
        # The whole bundle through the R4 models too (references, entries).
        construct_fhir_element("Bundle", bundle)
    except Exception as e:
        problems.append(f"{name}: Bundle: fhir.resources: {str(e)[:400]}")
    summary = ", ".join(f"{n} {t}" for t, n in sorted(counts.items()))
    print(f"{name}: {summary}: {'valid' if not problems else f'{len(problems)} problem(s)'} (fhir.resources R4, fhir.schema.json)")
    return problems


# ---------------------------------------------------------------- archive


def open_sealed(sealed, key, chain_id, contract, patient):
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    import zstandard

    if not sealed.startswith(MAGIC):
        raise ValueError("not a HealthSense archive (no HSARCH1 header)")
    nonce, ct = sealed[8:20], sealed[20:]
    aad = b"healthsense.archive.v1" + chain_id.to_bytes(8, "big") + contract + patient
    compressed = ChaCha20Poly1305(key).decrypt(nonce, ct, aad)
    reader = zstandard.ZstdDecompressor(max_window_size=1 << 31).stream_reader(compressed)
    return reader.read()


def rpc(url, to, data):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_call", "params": [{"to": to, "data": "0x" + data.hex()}, "latest"]})
    req = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as res:
        answer = json.load(res)
    if "error" in answer:
        raise RuntimeError(f"eth_call: {answer['error']}")
    return bytes.fromhex(answer["result"][2:])


def selector(signature):
    return keccak(signature.encode())[:4]


def word(n):
    return n.to_bytes(32, "big")


def first_reading(bundle):
    """The first row of the full series (layout: docs/ARCHIVE.md)."""
    device = next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Device")
    binary = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Binary" and e["resource"]["contentType"] == SERIES_TYPE
    )
    rows = base64.b64decode(binary["data"])
    be = lambda b: int.from_bytes(b, "big")
    n = rows[37]
    reading = {
        "deviceId": bytes.fromhex(device),
        "seq": be(rows[0:8]),
        "timestamp": be(rows[8:16]),
        "vitals": [be(rows[16 + 2 * i : 18 + 2 * i]) for i in range(6)],
        "consciousness": rows[28],
        "batchSeq": be(rows[29:37]),
        "batchId": rows[39:71],
        "signature": rows[72:137],
        "proof": [rows[138 + 33 * i : 138 + 33 * i + 32] for i in range(n)],
    }
    return reading


def leaf_of(r):
    # abi.encode(bytes32 deviceId, uint64 seq, uint64 timestamp, uint16 x6, uint8 consciousness)
    enc = r["deviceId"] + word(r["seq"]) + word(r["timestamp"]) + b"".join(word(v) for v in r["vitals"]) + word(r["consciousness"])
    return keccak(keccak(enc))


def process_proof(leaf, proof):
    h = leaf
    for p in proof:
        h = keccak(min(h, p) + max(h, p))
    return h


def check_sealed(a):
    problems = []
    if a.file:
        with open(a.file, "rb") as f:
            sealed = f.read()
    else:
        req = urllib.request.Request(f"{a.ipfs.rstrip('/')}/api/v0/cat?arg={a.cid}", b"", method="POST")
        with urllib.request.urlopen(req, timeout=120) as res:
            sealed = res.read()
    with open(a.key_file) as f:
        key = bytes.fromhex(f.read().strip().removeprefix("0x"))
    contract = bytes.fromhex(a.contract.removeprefix("0x"))
    patient = bytes.fromhex(a.patient.removeprefix("0x"))
    raw = open_sealed(sealed, key, a.chain_id, contract, patient)
    print(f"decrypted {len(sealed)} bytes with the patient key: {len(raw)} bytes of JSON")

    archive = rpc(a.rpc, a.contract, selector("getArchive(bytes32)") + patient)
    if archive[64:96] != keccak(raw):
        problems.append(f"record hash: keccak256 of the bundle {keccak(raw).hex()} is not the chain's {archive[64:96].hex()}")
    else:
        print(f"record hash 0x{keccak(raw).hex()} matches getArchive")

    bundle = json.loads(raw)
    problems += validate_bundle(bundle, "archive")

    r = first_reading(bundle)
    leaf = leaf_of(r)
    root = rpc(a.rpc, a.contract, selector("batchRoot(bytes32)") + r["batchId"])[:32]
    if root == bytes(32):
        problems.append(f"reading {r['seq']}: batch 0x{r['batchId'].hex()} is not anchored")
    elif process_proof(leaf, r["proof"]) != root:
        problems.append(f"reading {r['seq']}: its proof does not lead to the root anchored for batch {r['batchSeq']}")
    else:
        print(f"reading {r['seq']}: leaf 0x{leaf.hex()} and its {len(r['proof'])}-hash proof give root 0x{root.hex()} of batch {r['batchSeq']}")
    # The contract's own check: verifyReading(batchId, leaf, proof).
    call = selector("verifyReading(bytes32,bytes32,bytes32[])") + r["batchId"] + leaf + word(96) + word(len(r["proof"])) + b"".join(r["proof"])
    if rpc(a.rpc, a.contract, call)[-1] != 1:
        problems.append(f"reading {r['seq']}: verifyReading on chain returned false")
    else:
        print(f"reading {r['seq']}: verifyReading on chain returned true")
    return problems


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    b = sub.add_parser("bundle", help="validate FHIR bundle files")
    b.add_argument("files", nargs="+")
    s = sub.add_parser("sealed", help="decrypt, validate and re-check a sealed archive against the chain")
    s.add_argument("--key-file", required=True)
    s.add_argument("--chain-id", type=int, required=True)
    s.add_argument("--contract", required=True)
    s.add_argument("--patient", required=True)
    s.add_argument("--rpc", required=True)
    s.add_argument("--cid")
    s.add_argument("--ipfs")
    s.add_argument("--file")
    a = p.parse_args()
    if not os.path.exists(SCHEMA):
        print(f"no {SCHEMA}: run scripts/setup (it installs the FHIR R4 JSON schema from npm)", file=sys.stderr)
        return 1
    problems = []
    if a.mode == "bundle":
        for f in a.files:
            with open(f, "rb") as fh:
                problems += validate_bundle(json.load(fh), os.path.basename(f))
    else:
        if not a.file and not (a.cid and a.ipfs):
            p.error("sealed: give --file, or --cid and --ipfs")
        problems += check_sealed(a)
    for x in problems:
        print(f"INVALID {x}", file=sys.stderr)
    print("ok: every check passed" if not problems else f"FAILED: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
