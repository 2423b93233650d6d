// The official JavaScript Kubo client (kubo-rpc-client, from .tools) against
// the embedded IPFS node binary: id, version, add in both CID modes and at
// several sizes, cat, pin add/ls/rm. CIDs are compared with the values Kubo
// publishes in its own tests for the same bytes and options.
//
// Run: node --test oracle/ipfs-node/tests/js/kubo-rpc-client.test.mjs
// (after `cargo build --workspace --bin healthsense-ipfs`; HEALTHSENSE_IPFS_BIN overrides
// target/debug/healthsense-ipfs).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createCipheriv, createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '../../../..');
const tools = createRequire(join(root, '.tools/package.json'));
const { create } = await import(pathToFileURL(tools.resolve('kubo-rpc-client')).href);

const KiB = 1024;
const MiB = 1024 * KiB;

/** Kubo's deterministic test data (test/cli/testutils/random_deterministic.go):
 * the ChaCha20 keystream under key sha256(seed), zero nonce, counter 0. */
function kuboBytes(size, seed) {
  const key = createHash('sha256').update(seed).digest();
  // Node's chacha20 IV is the 32-bit counter then the 96-bit nonce: all zero.
  return createCipheriv('chacha20', key, Buffer.alloc(16)).update(Buffer.alloc(size));
}

/** The healthsense-ipfs binary on a fresh repository and a free port. */
async function startNode() {
  const bin = process.env.HEALTHSENSE_IPFS_BIN ?? join(root, 'target/debug/healthsense-ipfs');
  assert.ok(existsSync(bin), `${bin} is missing: build it with \`cargo build --workspace --bin healthsense-ipfs\``);
  const repo = mkdtempSync(join(tmpdir(), 'hs-ipfs-js-'));
  const child = spawn(bin, ['--repo', repo, '--listen', '127.0.0.1:0'], {
    env: { ...process.env, NO_COLOR: '1', RUST_LOG: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  let url;
  try {
    url = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`healthsense-ipfs did not start in 30 s:\n${log}`)), 30_000);
      const read = (chunk) => {
        log += chunk;
        const up = log.match(/serving the Kubo RPC API.*?(http:\/\/127\.0\.0\.1:\d+)/);
        if (up) {
          clearTimeout(timer);
          resolve(up[1]);
        }
      };
      // The node logs (tracing) to stdout; errors go to stderr.
      child.stdout.on('data', read);
      child.stderr.on('data', read);
      child.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`healthsense-ipfs exited with ${code}:\n${log}`));
      });
    });
  } catch (e) {
    child.kill('SIGKILL');
    rmSync(repo, { recursive: true, force: true });
    throw e;
  }
  return { child, repo, url, log: () => log };
}

async function catAll(client, cid, options) {
  const parts = [];
  for await (const part of client.cat(cid, options)) parts.push(part);
  return Buffer.concat(parts);
}

async function all(iterable) {
  const out = [];
  for await (const item of iterable) out.push(item);
  return out;
}

let node;
let client;

before(async () => {
  node = await startNode();
  client = create({ url: `${node.url}/api/v0`, timeout: '60s' });
});

after(async () => {
  if (node) {
    node.child.kill('SIGTERM');
    if (node.child.exitCode === null) await once(node.child, 'exit');
    rmSync(node.repo, { recursive: true, force: true });
  }
});

test('id and version', async () => {
  const id = await client.id();
  // An Ed25519 peer ID, parsed by the client's own libp2p code.
  assert.match(id.id.toString(), /^12D3KooW/);
  assert.match(id.agentVersion, /^healthsense-ipfs\//);
  assert.deepEqual(id.addresses, []);
  const workspace = readFileSync(join(root, 'Cargo.toml'), 'utf8');
  const version = workspace.match(/\[workspace\.package\][^[]*?\nversion\s*=\s*"([^"]+)"/)?.[1];
  assert.ok(version, 'no [workspace.package] version in Cargo.toml');
  const v = await client.version();
  assert.equal(v.version, version);
  assert.equal(v.repo, 'rust-ipfs-flatfs');
});

// Kubo's published CIDs for exact bytes and options.
const cidV1 = { cidVersion: 1 }; // raw leaves follow from CIDv1, as in Kubo
const cidV1Mib = { cidVersion: 1, chunker: 'size-1048576' }; // the unixfs-v1-2025 profile's chunks
const small = [
  // test/cli/add_test.go shortString* (CIDv0 default, CIDv1, CIDv1 without raw leaves)
  ['hello world', {}, 'Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD'],
  ['hello world', cidV1, 'bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e'],
  ['hello world', { cidVersion: 1, rawLeaves: false }, 'bafybeihykld7uyxzogax6vgyvag42y7464eywpf55gxi5qpoisibh3c5wa'],
  // test/sharness/t0040-add-and-cat.sh
  ['Hello Worlds!\n', {}, 'QmVr26fY1tKyspEJBniVhqxQeEjhF78XerGiqWAwraVLQH'],
  ['Hello Mars!\n', cidV1, 'bafkreibmlvvgdyihetgocpof6xk64kjjzdeq2e4c7hqs3krdheosk4tgj4'],
  ['', cidV1, 'bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku'],
  // test/sharness/t0114-gateway-subdomains/README.md
  ['hello\n', cidV1, 'bafkreicysg23kiwv34eg2d7qweipxwosdo2py4ldv42nbauguluen5v6am'],
];
// test/cli/cid_profiles_test.go: unixfs-v0-2015 (Kubo's defaults: CIDv0,
// 256 KiB chunks, 174 links) and unixfs-v1-2025 (CIDv1, 1 MiB chunks).
const large = [
  [256 * KiB, 'chunk-v0-seed', {}, 'QmWmRj3dFDZdb6ABvbmKhEL6TmPbAfBZ1t5BxsEyJrcZhE'],
  [256 * KiB + 1, 'chunk-v0-seed', {}, 'QmYyLxtzZyW22zpoVAtKANLRHpDjZtNeDjQdJrcQNWoRkJ'],
  [174 * 256 * KiB, 'v0-seed', {}, 'QmUbBALi174SnogsUzLpYbD4xPiBSFANF4iztWCsHbMKh2'],
  [174 * 256 * KiB + 1, 'v0-seed', {}, 'QmV81WL765sC8DXsRhE5fJv2rwhS4icHRaf3J9Zk5FdRnW'],
  [MiB, 'chunk-v1-seed', cidV1Mib, 'bafkreiacndfy443ter6qr2tmbbdhadvxxheowwf75s6zehscklu6ezxmta'],
  [MiB + 1, 'chunk-v1-seed', cidV1Mib, 'bafybeigmix7t42i6jacydtquhet7srwvgpizfg7gjbq7627d35mjomtu64'],
];

test('add and cat: small files get the CIDs Kubo gives them', async () => {
  for (const [text, options, kubo] of small) {
    const data = Buffer.from(text);
    const added = await client.add(data, options);
    assert.equal(added.cid.toString(), kubo, `${JSON.stringify(text)} ${JSON.stringify(options)}`);
    assert.deepEqual(await catAll(client, added.cid), data);
  }
});

test('add and cat: chunked files, both CID modes, at and past the chunk and link limits', async () => {
  for (const [size, seed, options, kubo] of large) {
    const data = kuboBytes(size, seed);
    const added = await client.add(data, options);
    assert.equal(added.cid.toString(), kubo, `${size} bytes, seed ${seed}, ${JSON.stringify(options)}`);
    const back = await catAll(client, added.cid);
    assert.equal(back.length, size);
    assert.ok(back.equals(data), `cat of ${kubo} differs from what was added`);
  }
  // offset and length cut across chunk boundaries.
  const data = kuboBytes(256 * KiB + 1, 'chunk-v0-seed');
  const window = await catAll(client, 'QmYyLxtzZyW22zpoVAtKANLRHpDjZtNeDjQdJrcQNWoRkJ', { offset: 256 * KiB - 10, length: 11 });
  assert.ok(window.equals(data.subarray(256 * KiB - 10)));
});

test('pin add, ls, rm', async () => {
  const data = kuboBytes(600 * KiB, 'healthsense-pins');
  const { cid } = await client.add(data, { cidVersion: 1, pin: false });
  // Not pinned yet: pin.ls({paths}) fails with Kubo's message.
  await assert.rejects(all(client.pin.ls({ paths: cid })), /is not pinned/);
  const indirect = async () => (await all(client.pin.ls({ type: 'indirect' }))).length;
  const indirectBefore = await indirect();

  const pinned = await client.pin.add(cid);
  assert.equal(pinned.toString(), cid.toString());
  const listed = await all(client.pin.ls({ paths: cid }));
  assert.deepEqual(listed.map((p) => [p.cid.toString(), p.type]), [[cid.toString(), 'recursive']]);
  // Its three leaves are kept through the root: indirect.
  const every = await all(client.pin.ls());
  assert.ok(every.some((p) => p.cid.equals(cid) && p.type === 'recursive'));
  assert.equal(await indirect(), indirectBefore + 3);
  const recursive = await all(client.pin.ls({ type: 'recursive' }));
  assert.ok(recursive.every((p) => p.type === 'recursive') && recursive.some((p) => p.cid.equals(cid)));

  const removed = await client.pin.rm(cid);
  assert.equal(removed.toString(), cid.toString());
  assert.equal(await indirect(), indirectBefore);
  await assert.rejects(all(client.pin.ls({ paths: cid })), /is not pinned/);
  await assert.rejects(client.pin.rm(cid), /not pinned or pinned indirectly/);

  // A direct pin lists as direct and goes with recursive: false.
  await client.pin.add(cid, { recursive: false });
  const direct = await all(client.pin.ls({ type: 'direct' }));
  assert.deepEqual(direct.map((p) => p.cid.toString()), [cid.toString()]);
  await client.pin.rm(cid, { recursive: false });
  assert.deepEqual(await all(client.pin.ls({ type: 'direct' })), []);
  // The blocks stay: cat still answers.
  assert.ok((await catAll(client, cid)).equals(data));
});

test('an option that would change the CID is refused with Kubo\'s error', async () => {
  await assert.rejects(client.add(Buffer.from('x'), { trickle: true }), /trickle/);
  await assert.rejects(client.add(Buffer.from('x'), { hashAlg: 'sha2-512' }), /sha2-512/);
});
