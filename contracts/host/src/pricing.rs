//! Ink and gas prices, as a Nitro node charges a Stylus program.
//!
//! Facts restated from OffchainLabs' nitro repository at commit
//! `6dce8d13902649a1acdfd3f2504129f1f5612358` (April 2026, ArbOS 50-series
//! StylusParams): per-instruction ink from the prover's `pricing_v1`
//! (`crates/prover/src/programs/meter.rs`, formerly `arbitrator/prover`),
//! hostio base ink and the read/write/keccak prices from
//! `crates/arbutil/src/pricing.rs`, how each hostio buys them from
//! `crates/wasm-libraries/user-host-trait/lib.rs`, the storage cache's own
//! charges from `crates/arbutil/src/evm/storage.rs`, the EVM constants from
//! `crates/arbutil/src/evm/mod.rs`, and the memory model and default
//! parameters (ink price 10,000, 2 free pages, 1,000 gas per page, page
//! limit 128) from `arbos/programs/memory.go` and `params.go`.
//!
//! The EVM side of storage writes follows the EIP-2929/EIP-2200 `SSTORE`
//! rule that geth applies to Stylus flushes; refunds are not modelled.

use wasmer::wasmparser::Operator;

/// Ink per gas at the default ink price.
pub const INK_PER_GAS: u64 = 10_000;

/// Converts gas to ink.
pub fn gas_to_ink(gas: u64) -> u64 {
    gas.saturating_mul(INK_PER_GAS)
}

/// Base ink of a hostio that may return something.
pub const HOSTIO_INK: u64 = 8_400;
/// Extra ink of a hostio per pointer argument.
pub const PTR_INK: u64 = 13_440 - HOSTIO_INK;
/// Extra ink of a hostio that goes through the EVM API.
pub const EVM_API_INK: u64 = 59_673;

/// `read_args`, `write_result`, `return_data_size`, `block_timestamp`,
/// `chainid`, `msg_reentrant`, and `pay_for_memory_grow(0)`.
pub const PLAIN_HOSTIO: u64 = HOSTIO_INK;
/// `msg_sender`, `msg_value`, `contract_address`.
pub const ONE_PTR_HOSTIO: u64 = HOSTIO_INK + PTR_INK;
/// `storage_load_bytes32`, `storage_cache_bytes32`.
pub const STORAGE_HOSTIO: u64 = HOSTIO_INK + 2 * PTR_INK;
/// `storage_flush_cache`, `read_return_data`, `emit_log`.
pub const EVM_API_HOSTIO: u64 = HOSTIO_INK + EVM_API_INK;
/// `call_contract`, `delegate_call_contract`, `static_call_contract`.
pub const CALL_HOSTIO: u64 = HOSTIO_INK + 3 * PTR_INK + EVM_API_INK;

/// Ink to copy `bytes` into the program's memory.
pub fn write_price(bytes: u32) -> u64 {
    5_040 + 30 * u64::from(bytes.saturating_sub(32))
}

/// Ink to copy `bytes` out of the program's memory.
pub fn read_price(bytes: u32) -> u64 {
    16_381 + 55 * u64::from(bytes.saturating_sub(32))
}

/// Ink of `native_keccak256` over `bytes`.
pub fn keccak_price(bytes: u32) -> u64 {
    let words = u64::from(evm_words(bytes)).saturating_sub(2);
    121_800 + 21_000 * words
}

/// 32-byte words covering `bytes`.
pub fn evm_words(bytes: u32) -> u32 {
    bytes.div_ceil(32)
}

/// Gas of the storage cache's bookkeeping for its `reads`-th read.
pub fn cache_read_gas(reads: usize) -> u64 {
    match reads {
        0..=32 => 0,
        33..=128 => 2,
        _ => 10,
    }
}

/// Gas of the storage cache's bookkeeping for its `writes`-th write.
pub fn cache_write_gas(writes: usize) -> u64 {
    match writes {
        0..=8 => 0,
        9..=64 => 7,
        _ => 10,
    }
}

/// EIP-2929 cold storage read.
pub const COLD_SLOAD_GAS: u64 = 2_100;
/// EIP-2929 warm storage read.
pub const WARM_SLOAD_GAS: u64 = 100;
/// EIP-2929 cold account access.
pub const COLD_ACCOUNT_GAS: u64 = 2_600;
/// Per log, and per topic.
pub const LOG_TOPIC_GAS: u64 = 375;
/// Per byte of log data.
pub const LOG_DATA_GAS: u64 = 8;
/// The `ecrecover` precompile.
pub const ECRECOVER_GAS: u64 = 3_000;

/// EIP-2929/EIP-2200 gas of writing `new` over `current` (whose value at the
/// start of the transaction was `original`); `cold` adds the cold access.
pub fn sstore_gas(original: [u8; 32], current: [u8; 32], new: [u8; 32], cold: bool) -> u64 {
    let access = if cold { COLD_SLOAD_GAS } else { 0 };
    let write = if current == new {
        WARM_SLOAD_GAS
    } else if original == current {
        if original == [0; 32] {
            20_000
        } else {
            5_000 - COLD_SLOAD_GAS
        }
    } else {
        WARM_SLOAD_GAS
    };
    access + write
}

/// Gas of a log with `topics` topics and `data` bytes.
pub fn log_gas(topics: u32, data: u32) -> u64 {
    (1 + u64::from(topics)) * LOG_TOPIC_GAS + u64::from(data) * LOG_DATA_GAS
}

/// Free pages per transaction.
pub const FREE_PAGES: u16 = 2;
/// Linear gas per page beyond the free ones.
pub const PAGE_GAS: u64 = 1_000;

/// Exponential part of the memory price by pages ever opened in the
/// transaction (Nitro's `memoryExponents`, 0..=128 pages).
const MEMORY_EXPONENTS: [u32; 129] = [
    1, 1, 1, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6, 7, 8, 9, 11, 12, 14, 17, 19, 22, 25, 29, 33, 38, 43, 50, 57, 65, 75,
    85, 98, 112, 128, 147, 168, 193, 221, 253, 289, 331, 379, 434, 497, 569, 651, 745, 853, 976, 1117, 1279, 1463,
    1675, 1917, 2194, 2511, 2874, 3290, 3765, 4309, 4932, 5645, 6461, 7395, 8464, 9687, 11087, 12689, 14523, 16621,
    19024, 21773, 24919, 28521, 32642, 37359, 42758, 48938, 56010, 64104, 73368, 83971, 96106, 109994, 125890,
    144082, 164904, 188735, 216010, 247226, 282953, 323844, 370643, 424206, 485509, 555672, 635973, 727880, 833067,
    953456, 1091243, 1248941, 1429429, 1636000, 1872423, 2143012, 2452704, 2807151, 3212820, 3677113, 4208502,
    4816684, 5512756, 6309419, 7221210, 8264766, 9459129, 10826093, 12390601, 14181199, 16230562, 18576084,
    21260563, 24332984, 27849408, 31873999,
];

fn memory_exp(pages: u16) -> u64 {
    MEMORY_EXPONENTS.get(usize::from(pages)).map_or(u64::MAX, |&e| u64::from(e))
}

/// Gas of opening `new` pages while `open` are open and `ever` have been
/// open at once in this transaction (Nitro's `MemoryModel.GasCost`).
pub fn memory_gas(new: u16, open: u16, ever: u16) -> u64 {
    let new_open = open.saturating_add(new);
    let new_ever = ever.max(new_open);
    if new_ever <= FREE_PAGES {
        return 0;
    }
    let adding = new_open.saturating_sub(FREE_PAGES).saturating_sub(open.saturating_sub(FREE_PAGES));
    let linear = u64::from(adding) * PAGE_GAS;
    linear.saturating_add(memory_exp(new_ever).saturating_sub(memory_exp(ever)))
}

/// Ink of one instruction (`pricing_v1`); `type_params` gives each type's
/// parameter count for `call_indirect`. Instructions Nitro does not support
/// cost more than any budget (activation checks refuse them first).
pub fn op_ink(op: &Operator, type_params: &[usize]) -> u64 {
    use Operator as O;
    match op {
        O::Unreachable | O::Return | O::Nop | O::I32Const { .. } | O::I64Const { .. } => 1,
        O::Drop => 9,
        O::Block { .. } | O::Loop { .. } | O::Else | O::End => 1,
        O::Br { .. } | O::BrIf { .. } | O::If { .. } => 765,
        O::Select => 1_250,
        O::Call { .. } => 3_800,
        O::LocalGet { .. } | O::LocalTee { .. } => 75,
        O::LocalSet { .. } => 210,
        O::GlobalGet { .. } => 225,
        O::GlobalSet { .. } => 575,
        O::I32Load { .. } | O::I32Load8S { .. } | O::I32Load8U { .. } | O::I32Load16S { .. } | O::I32Load16U { .. } => 670,
        O::I64Load { .. }
        | O::I64Load8S { .. }
        | O::I64Load8U { .. }
        | O::I64Load16S { .. }
        | O::I64Load16U { .. }
        | O::I64Load32S { .. }
        | O::I64Load32U { .. } => 680,
        O::I32Store { .. } | O::I32Store8 { .. } | O::I32Store16 { .. } => 825,
        O::I64Store { .. } | O::I64Store8 { .. } | O::I64Store16 { .. } | O::I64Store32 { .. } => 950,
        O::MemorySize { .. } => 3_000,
        O::MemoryGrow { .. } => 8_050,
        O::I32Eqz | O::I32Eq | O::I32Ne | O::I32LtS | O::I32LtU | O::I32GtS | O::I32GtU | O::I32LeS | O::I32LeU | O::I32GeS | O::I32GeU => 170,
        O::I64Eqz | O::I64Eq | O::I64Ne | O::I64LtS | O::I64LtU | O::I64GtS | O::I64GtU | O::I64LeS | O::I64LeU | O::I64GeS | O::I64GeU => 225,
        O::I32Clz | O::I32Ctz | O::I64Clz | O::I64Ctz => 210,
        O::I32Add | O::I32Sub => 70,
        O::I32Mul | O::I64Mul => 160,
        O::I32DivS | O::I32DivU | O::I32RemS | O::I32RemU => 1_120,
        O::I32And | O::I32Or | O::I32Xor | O::I32Shl | O::I32ShrS | O::I32ShrU | O::I32Rotl | O::I32Rotr => 70,
        O::I64Add | O::I64Sub => 100,
        O::I64DivS | O::I64DivU | O::I64RemS | O::I64RemU => 1_270,
        O::I64And | O::I64Or | O::I64Xor | O::I64Shl | O::I64ShrS | O::I64ShrU | O::I64Rotl | O::I64Rotr => 100,
        O::I32Popcnt => 2_650,
        O::I64Popcnt => 6_000,
        O::I32WrapI64 | O::I64ExtendI32S | O::I64ExtendI32U => 100,
        O::I32Extend8S | O::I32Extend16S | O::I64Extend8S | O::I64Extend16S | O::I64Extend32S => 100,
        O::MemoryCopy { .. } | O::MemoryFill { .. } => 950,
        O::BrTable { targets } => 2_400 + 325 * u64::from(targets.len()),
        O::CallIndirect { type_index, .. } => {
            13_610 + 650 * type_params.get(*type_index as usize).copied().unwrap_or(0) as u64
        }
        _ => UNSUPPORTED_INK,
    }
}

/// What an instruction Nitro does not support costs here: more than any
/// transaction can pay, without overflowing the meter's sums.
pub const UNSUPPORTED_INK: u64 = 1 << 48;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostio_prices_match_nitros_sums() {
        assert_eq!(PTR_INK, 5_040);
        assert_eq!(STORAGE_HOSTIO, 18_480);
        assert_eq!(CALL_HOSTIO, 8_400 + 15_120 + 59_673);
        assert_eq!(keccak_price(64), 121_800);
        assert_eq!(keccak_price(96), 142_800);
        assert_eq!(read_price(32), 16_381);
        assert_eq!(write_price(33), 5_070);
    }

    #[test]
    fn memory_is_free_up_to_two_pages_then_linear_plus_exponential() {
        assert_eq!(memory_gas(2, 0, 0), 0);
        // 3 pages: one paid page, exponent 1 - 1.
        assert_eq!(memory_gas(3, 0, 0), 1_000);
        // Reopening pages already paid for in this transaction costs only
        // the linear part.
        assert_eq!(memory_gas(3, 0, 3), 1_000);
        assert_eq!(memory_gas(10, 0, 0), 8_000 + 3 - 1);
    }

    #[test]
    fn sstore_follows_eip_2200_and_2929() {
        let (z, a, b) = ([0u8; 32], [1u8; 32], [2u8; 32]);
        assert_eq!(sstore_gas(z, z, a, true), 22_100);
        assert_eq!(sstore_gas(a, a, b, false), 2_900);
        assert_eq!(sstore_gas(a, b, a, false), 100);
        assert_eq!(sstore_gas(a, a, a, true), 2_200);
    }
}
