//! Merkle trees with OpenZeppelin's conventions: sorted-pair keccak256
//! (`MerkleProof.verify`) and the `StandardMerkleTree` layout of
//! `@openzeppelin/merkle-tree` (leaves sorted by hash, stored at the end of a
//! flat array, `tree[i] = hashPair(tree[2i+1], tree[2i+2])`), so roots and
//! proofs match what that library produces and verifies.

use alloy_primitives::{keccak256, B256};

/// `keccak256` of the two nodes in ascending order (commutative).
pub fn hash_pair(a: &B256, b: &B256) -> B256 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(lo.as_slice());
    buf[32..].copy_from_slice(hi.as_slice());
    keccak256(buf)
}

/// OpenZeppelin `MerkleProof.processProof`: the root implied by `leaf` and `proof`.
pub fn process_proof(proof: &[B256], leaf: B256) -> B256 {
    proof.iter().fold(leaf, |node, sibling| hash_pair(&node, sibling))
}

/// OpenZeppelin `MerkleProof.verify`.
pub fn verify(proof: &[B256], root: B256, leaf: B256) -> bool {
    process_proof(proof, leaf) == root
}

#[cfg(feature = "std")]
pub use tree::{StandardTree, TreeError};

#[cfg(feature = "std")]
mod tree {
    use super::*;
    use std::vec::Vec;

    /// Why a tree could not be built or asked.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum TreeError {
        /// A tree needs at least one leaf.
        Empty,
        /// The leaf is not in this tree.
        UnknownLeaf(B256),
    }

    impl core::fmt::Display for TreeError {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            match self {
                Self::Empty => write!(f, "a Merkle tree needs at least one leaf"),
                Self::UnknownLeaf(l) => write!(f, "leaf {l} is not in this tree"),
            }
        }
    }

    impl std::error::Error for TreeError {}

    /// A built tree: the flat node array of `@openzeppelin/merkle-tree`.
    #[derive(Debug, Clone)]
    pub struct StandardTree {
        nodes: Vec<B256>,
        leaves: usize,
    }

    impl StandardTree {
        /// Builds the tree of already-hashed leaves (e.g.
        /// [`reading_leaf`](crate::rules::reading::reading_leaf)), sorted by
        /// hash as `StandardMerkleTree.of(values, encoding)` does by default.
        pub fn new(leaves: impl IntoIterator<Item = B256>) -> Result<Self, TreeError> {
            let mut sorted: Vec<B256> = leaves.into_iter().collect();
            if sorted.is_empty() {
                return Err(TreeError::Empty);
            }
            sorted.sort_unstable();
            let n = sorted.len();
            let mut nodes = vec![B256::ZERO; 2 * n - 1];
            for (i, leaf) in sorted.into_iter().enumerate() {
                nodes[2 * n - 2 - i] = leaf;
            }
            for i in (0..n - 1).rev() {
                nodes[i] = hash_pair(&nodes[2 * i + 1], &nodes[2 * i + 2]);
            }
            Ok(Self { nodes, leaves: n })
        }

        /// The root to anchor.
        pub fn root(&self) -> B256 {
            self.nodes[0]
        }

        /// Number of leaves.
        pub fn len(&self) -> usize {
            self.leaves
        }

        /// Always false: a tree has at least one leaf.
        pub fn is_empty(&self) -> bool {
            false
        }

        /// Proofs for every leaf at once, keyed by leaf, in O(n log n).
        pub fn proofs(&self) -> impl Iterator<Item = (B256, Vec<B256>)> + '_ {
            let first = self.nodes.len() - self.leaves;
            (first..self.nodes.len()).map(move |i| (self.nodes[i], self.proof_at(i)))
        }

        /// The proof of `leaf`.
        pub fn proof(&self, leaf: &B256) -> Result<Vec<B256>, TreeError> {
            let first = self.nodes.len() - self.leaves;
            // Leaves sit in descending order at the end of the array.
            let tail = &self.nodes[first..];
            let pos = tail
                .binary_search_by(|probe| leaf.cmp(probe))
                .map_err(|_| TreeError::UnknownLeaf(*leaf))?;
            Ok(self.proof_at(first + pos))
        }

        fn proof_at(&self, mut i: usize) -> Vec<B256> {
            let mut proof = Vec::new();
            while i > 0 {
                let sibling = if i % 2 == 1 { i + 1 } else { i - 1 };
                proof.push(self.nodes[sibling]);
                i = (i - 1) / 2;
            }
            proof
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<B256> {
        (0..n).map(|i| keccak256((i as u64).to_be_bytes())).collect()
    }

    #[test]
    fn every_proof_verifies_for_many_sizes() {
        for n in [1usize, 2, 3, 4, 5, 7, 8, 9, 31, 100, 257] {
            let tree = StandardTree::new(leaves(n)).unwrap();
            assert_eq!(tree.len(), n);
            let mut seen = 0;
            for (leaf, proof) in tree.proofs() {
                assert!(verify(&proof, tree.root(), leaf), "n={n}");
                assert_eq!(tree.proof(&leaf).unwrap(), proof);
                seen += 1;
            }
            assert_eq!(seen, n);
        }
    }

    #[test]
    fn altered_leaf_or_proof_is_rejected() {
        let tree = StandardTree::new(leaves(10)).unwrap();
        let (leaf, proof) = tree.proofs().next().unwrap();
        let mut bad_leaf = leaf;
        bad_leaf.0[31] ^= 1;
        assert!(!verify(&proof, tree.root(), bad_leaf));
        let mut bad_proof = proof.clone();
        bad_proof[0].0[0] ^= 0x80;
        assert!(!verify(&bad_proof, tree.root(), leaf));
        assert!(!verify(&proof[1..], tree.root(), leaf));
        assert_eq!(tree.proof(&bad_leaf), Err(TreeError::UnknownLeaf(bad_leaf)));
    }

    #[test]
    fn order_of_input_does_not_change_root_and_single_leaf_is_root() {
        let mut l = leaves(6);
        let a = StandardTree::new(l.clone()).unwrap().root();
        l.reverse();
        assert_eq!(a, StandardTree::new(l).unwrap().root());
        let one = leaves(1);
        let t = StandardTree::new(one.clone()).unwrap();
        assert_eq!(t.root(), one[0]);
        assert!(t.proof(&one[0]).unwrap().is_empty());
        assert_eq!(StandardTree::new([]).unwrap_err(), TreeError::Empty);
    }

    #[test]
    fn two_and_three_leaf_roots_follow_the_flat_layout() {
        let l = leaves(3);
        let mut s = l.clone();
        s.sort();
        // nodes = [root, n1, s[0]] + ... : leaves descending at the end.
        // n=3: nodes[4]=s0, nodes[3]=s1, nodes[2]=s2, nodes[1]=h(s1,s0), root=h(n1,s2)
        let n1 = hash_pair(&s[1], &s[0]);
        assert_eq!(StandardTree::new(l).unwrap().root(), hash_pair(&n1, &s[2]));
    }
}
