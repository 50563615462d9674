//! The entry rule compiled to regorus's bytecode (the RVM) for the per-event decision.
//!
//! regorus's tree-walking interpreter spends most of a decision on bookkeeping (rule paths built
//! as strings, per-module state, allocations): about 60 µs for the demo set. The same rules
//! compiled once into an RVM program run in under 10 µs. The interpreter
//! stays for everything else (`test_*` rules, [`super::explain`], any rule other than the
//! entry), and it is the fallback when a policy uses something the RVM compiler does not
//! support: [`Compiled::build`] fails, the set logs why and decides with the interpreter.
//!
//! The VM is set up as close to the interpreter as it allows: strict builtin errors, the same
//! wall-clock limit, no instruction limit besides it. One difference remains and is why the
//! interpreter stays the default engine: the VM treats an error inside a rule body (a builtin
//! error, `1 / 0`, a conflict) as that body not holding, where the interpreter fails the whole
//! decision closed. A policy whose deny rules can raise errors may allow with the VM what the
//! interpreter denies with `policy_error`.

use std::sync::Arc;
use std::time::Duration;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::vm::VmError;
use regorus::rvm::{Program, RegoVM};
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::CompiledPolicy;

/// How many VM instructions run between two reads of the clock for the time limit.
const TIMER_CHECK_INTERVAL: u32 = 64;

/// The entry rule compiled once per policy set; shared by every worker's [`Machine`].
#[derive(Clone)]
pub(crate) struct Compiled {
    policy: CompiledPolicy,
    program: Arc<Program>,
    data: regorus::Value,
    entry: String,
}

impl Compiled {
    /// Compiles `entry` of a loaded (not yet evaluated) engine; the error says why not.
    pub(crate) fn build(engine: &regorus::Engine, entry: &str) -> Result<Self, String> {
        let mut engine = engine.clone();
        let rule: regorus::Rc<str> = entry.into();
        let policy = engine
            .compile_with_entrypoint(&rule)
            .map_err(|e| e.to_string())?;
        let program =
            Compiler::compile_from_policy(&policy, &[entry]).map_err(|e| e.to_string())?;
        Ok(Self {
            policy,
            program,
            data: engine.get_data(),
            entry: entry.to_owned(),
        })
    }

    /// A VM for one worker, with the set's data.
    pub(crate) fn machine(&self, timeout: Duration) -> Result<Machine, String> {
        Machine::new(self, self.data.clone(), timeout)
    }

    /// A VM deciding with `data` instead of the set's (for test cases that override data).
    pub(crate) fn machine_with_data(
        &self,
        data: regorus::Value,
        timeout: Duration,
    ) -> Result<Machine, String> {
        Machine::new(self, data, timeout)
    }
}

/// One worker's VM: evaluates the compiled entry rule for one input at a time.
pub(crate) struct Machine {
    vm: RegoVM,
    entry: String,
}

/// Why the VM produced no value.
#[derive(Debug)]
pub(crate) enum MachineError {
    /// The wall-clock limit was reached.
    Timeout(String),
    /// Any other evaluation error (a builtin error, a conflict, …).
    Failed(String),
}

impl Machine {
    fn new(compiled: &Compiled, data: regorus::Value, timeout: Duration) -> Result<Self, String> {
        let mut vm = RegoVM::new_with_policy(compiled.policy.clone());
        vm.load_program(compiled.program.clone());
        vm.set_data(data).map_err(|e| e.to_string())?;
        vm.set_strict_builtin_errors(true);
        vm.set_max_instructions(usize::MAX);
        vm.set_execution_timer_config(Some(ExecutionTimerConfig {
            limit: timeout,
            check_interval: std::num::NonZeroU32::new(TIMER_CHECK_INTERVAL)
                .unwrap_or(std::num::NonZeroU32::MIN),
        }));
        Ok(Self {
            vm,
            entry: compiled.entry.clone(),
        })
    }

    /// The entry rule's value for `input` (`Undefined` when no rule body holds).
    pub(crate) fn eval(&mut self, input: regorus::Value) -> Result<regorus::Value, MachineError> {
        self.vm.set_input(input);
        self.vm
            .execute_entry_point_by_name(&self.entry)
            .map_err(|e| match e {
                VmError::TimeLimitExceeded { .. } => MachineError::Timeout(e.to_string()),
                other => MachineError::Failed(other.to_string()),
            })
    }
}
