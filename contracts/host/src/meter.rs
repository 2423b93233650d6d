//! The ink meter: a Wasmer middleware that charges each basic block's ink at
//! Nitro's prices, modelled on Nitro's `meter` middleware.
//!
//! Two globals are appended to every module and exported: the ink left
//! ([`INK_LEFT`], `i64`) and the status ([`INK_STATUS`], `i32`, 1 once the
//! program ran out). A block whose price exceeds the ink left sets the
//! status and traps with `unreachable` before the instruction that ends it.
//!
//! Unlike wasmer-middlewares' `Metering`, one [`InkMeter`] serves every
//! module compiled by the host's single engine (a Wasmer module must be
//! instantiated in a store of the engine that compiled it): each
//! `transform_module_info` call resets the per-module state (the two
//! global indexes and the parameter count of each type, which prices
//! `call_indirect`). That state is shared between the module pass and the
//! function passes of one compilation, so compilations are serialized by
//! [`compile_lock`].

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use wasmer::sys::{FunctionMiddleware, MiddlewareError, MiddlewareReaderState, ModuleMiddleware};
use wasmer::wasmparser::{BlockType, Operator};
use wasmer::{ExportIndex, GlobalInit, GlobalType, LocalFunctionIndex, Mutability, Type};
use wasmer_types::ModuleInfo;

use crate::pricing;

/// Export name of the ink-left global.
pub const INK_LEFT: &str = "stylus_ink_left";
/// Export name of the out-of-ink status global.
pub const INK_STATUS: &str = "stylus_ink_status";

/// Held for the whole of one module's compilation.
pub(crate) fn compile_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the function passes need to know about the module being compiled.
#[derive(Debug, Clone, Default)]
struct ModuleState {
    ink_left: u32,
    ink_status: u32,
    type_params: Arc<Vec<usize>>,
}

/// The module-level middleware; install once in the engine's compiler.
#[derive(Debug, Default)]
pub(crate) struct InkMeter {
    state: RwLock<Option<ModuleState>>,
}

impl ModuleMiddleware for InkMeter {
    fn generate_function_middleware(&self, _: LocalFunctionIndex) -> Box<dyn FunctionMiddleware> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner).clone();
        Box::new(FuncMeter { state, cost: 0 })
    }

    fn transform_module_info(&self, info: &mut ModuleInfo) -> Result<(), MiddlewareError> {
        let type_params = info.signatures.values().map(|sig| sig.params().len()).collect();
        let ink_left = info.globals.push(GlobalType::new(Type::I64, Mutability::Var));
        info.global_initializers.push(GlobalInit::I64Const(0));
        info.exports.insert(INK_LEFT.into(), ExportIndex::Global(ink_left));
        let ink_status = info.globals.push(GlobalType::new(Type::I32, Mutability::Var));
        info.global_initializers.push(GlobalInit::I32Const(0));
        info.exports.insert(INK_STATUS.into(), ExportIndex::Global(ink_status));
        let state = ModuleState {
            ink_left: ink_left.as_u32(),
            ink_status: ink_status.as_u32(),
            type_params: Arc::new(type_params),
        };
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = Some(state);
        Ok(())
    }
}

/// The per-function pass: sums the price of a basic block's
/// instructions and, before the instruction that ends the block (so before
/// any call or branch leaves it), charges the sum.
///
/// Nitro charges a block before its first instruction; Wasmer's
/// `FunctionMiddleware::feed` hands out operators that borrow the module
/// for one call only, so a pass cannot hold a block back and charges at
/// its end instead. The ink of every completed block is the same; only a
/// program that runs out of ink stops a few instructions later (its
/// effects are reverted either way).
#[derive(Debug)]
struct FuncMeter {
    state: Option<ModuleState>,
    cost: u64,
}

/// Whether `op` ends a basic block (a branch, a call, or a branch target).
fn ends_block(op: &Operator) -> bool {
    use Operator as O;
    matches!(
        op,
        O::End
            | O::Else
            | O::Return
            | O::Loop { .. }
            | O::If { .. }
            | O::Br { .. }
            | O::BrIf { .. }
            | O::BrTable { .. }
            | O::Call { .. }
            | O::CallIndirect { .. }
            | O::ReturnCall { .. }
            | O::ReturnCallIndirect { .. }
    )
}

impl FunctionMiddleware for FuncMeter {
    fn feed<'a>(&mut self, op: Operator<'a>, out: &mut MiddlewareReaderState<'a>) -> Result<(), MiddlewareError> {
        let Some(state) = &self.state else {
            return Err(MiddlewareError::new("ink meter", "function compiled before its module was transformed"));
        };
        // Priced before the check, so the ending instruction (a call, say)
        // is paid for before it runs.
        self.cost = self.cost.saturating_add(pricing::op_ink(&op, &state.type_params));
        if ends_block(&op) && self.cost > 0 {
            let (left, status) = (state.ink_left, state.ink_status);
            let cost = i64::try_from(self.cost).unwrap_or(i64::MAX);
            out.extend(&[
                Operator::GlobalGet { global_index: left },
                Operator::I64Const { value: cost },
                Operator::I64LtU,
                Operator::If { blockty: BlockType::Empty },
                Operator::I32Const { value: 1 },
                Operator::GlobalSet { global_index: status },
                Operator::Unreachable,
                Operator::End,
                Operator::GlobalGet { global_index: left },
                Operator::I64Const { value: cost },
                Operator::I64Sub,
                Operator::GlobalSet { global_index: left },
            ]);
            self.cost = 0;
        }
        out.push_operator(op);
        Ok(())
    }
}
