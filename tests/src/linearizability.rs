//! Linearizability checking of recorded register/compare-and-set histories (issue 20).
//!
//! Clients of the coord service read, write and compare-and-set keys through partitions,
//! kills and pauses, and every operation is recorded with the time it was invoked and the
//! time its answer arrived ([`Recorder`]). [`check`] then decides whether one total order of
//! the operations both respects real time (an operation that returned before another was
//! invoked comes first) and is a legal run of one versioned register per key: whether the
//! history is linearizable, the guarantee a Raft KV with linearizable reads makes.
//!
//! How, and why this way:
//! - **Per key.** Linearizability is local (Herlihy & Wing): a history is linearizable iff
//!   every key's sub-history is, and many small searches are far cheaper than one big one.
//! - **Wing & Gong's search with Lowe's memoization, as Porcupine runs it.** The pending
//!   operations' call and return events sit in one time-ordered, doubly linked list. The
//!   search linearizes any operation whose call precedes the earliest pending return (it
//!   overlaps everything still pending), lifts its two events out of the list, and recurses;
//!   when it reaches that earliest return instead, nothing fits at this point and it
//!   backtracks. A cache of (set of linearized operations, register state) pairs already
//!   explored prunes the search: two orders that reach the same set and state have the
//!   same futures.
//! - **Indeterminate operations** (the client never heard back) may have taken effect at
//!   any time after their call, or never. They have no return event (their return is at
//!   +infinity, after everything), they are candidates whenever their call precedes the
//!   earliest pending return, and they may be left out: the search succeeds as soon as
//!   every *completed* operation is placed. An indeterminate read has no effect and tells
//!   nothing, so it is dropped; so is any operation the server definitely did not apply
//!   ([`Output::Failed`]).
//! - **Keeping indeterminate operations cheap.** Left as plain candidates, k pending
//!   timeouts make every dead end of the search cost 2^k (every subset of them is tried),
//!   and a chaos run has dozens. Sound reductions keep that about linear; each is justified
//!   where it lives: values no operation compares against are merged into one
//!   "unobserved" value (`Interner`); indeterminate writes of such values are
//!   interchangeable, so only the earliest-invoked unused one is a candidate
//!   (`Problem::hidden_writes`); an indeterminate operation is only placed right before
//!   one it makes possible (`Model::reducible`), and not at all when no pending operation
//!   could tell (`Outlook::allows`, which also stops any order that overshoots a version
//!   a pending read must still see); and pending compare-and-sets wait in one list per
//!   precondition, so a state only looks at those that can succeed in it.
//!   A differential test against a brute-force search backs all of them.
//! - **A budget.** Deciding linearizability is NP-complete; an adversarial history can make
//!   any exact checker run for ever. [`Budget`] bounds the steps per key (and optionally the
//!   wall time); running out gives [`Outcome::Unknown`], never a guess.
//! - **A report.** A violation names the key, the longest consistent order the search
//!   found, the register state it led to, and the completed operation that no order could
//!   place before its return — [`Violation`]'s `Display` is meant for a chaos run's log.
//! - **Lost acknowledged writes** are a special case of linearizability, not a separate
//!   check: see [`check_with_final_reads`].
//!
//! Mapping the coord client's calls: `put` is [`Input::Write`]; `set` with an expected
//! version is [`Input::Cas`] with [`Expected::Version`]; `create` is a CAS expecting the key
//! absent; a transaction comparing the value is a CAS with [`Expected::Value`]; `get` is a
//! read, best recorded as [`Output::ReadVersionedOk`] (the version makes the check
//! stronger). A precondition failure (bad version, node exists) is [`Output::CasFailed`]; a
//! refusal before anything was proposed is [`Output::Failed`]; a timeout or a dropped
//! connection is [`Output::Unknown`] — when in doubt, `Unknown`: it is never wrong, only
//! weaker.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The `client` of the reads [`check_with_final_reads`] appends, so reports can say so.
pub const FINAL_READ_CLIENT: usize = usize::MAX;

/// One operation of a recorded history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<V = u64> {
    /// Which client ran it: only for reports, the check itself uses nothing but the times.
    pub client: usize,
    pub key: String,
    /// When it was invoked, in nanoseconds on one monotonic clock (the [`Recorder`]'s).
    pub call: u64,
    /// When its answer arrived; `None` when none did. Ignored for [`Output::Unknown`]: an
    /// operation whose client gave up may still take effect later.
    pub ret: Option<u64>,
    pub input: Input<V>,
    pub output: Output<V>,
}

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<V = u64> {
    Read,
    /// An unconditional write (an upsert).
    Write(V),
    /// Write `new` if the register matches `expected`.
    Cas {
        expected: Expected<V>,
        new: V,
    },
}

/// A compare-and-set's precondition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected<V = u64> {
    /// The current value, `None` meaning the key is absent (a create).
    Value(Option<V>),
    /// The current version: 0 while the key is absent, then one more per applied write
    /// (deletes, which restart it in the coord service, are not modelled).
    Version(u64),
}

/// What a client heard back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<V = u64> {
    /// A read's value, `None` for an absent key.
    ReadOk(Option<V>),
    /// A read's value and version (0 for an absent key): checks the version too.
    ReadVersionedOk {
        value: Option<V>,
        version: u64,
    },
    WriteOk,
    CasOk,
    /// The server answered that the precondition did not hold: an observation, checked
    /// like a read.
    CasFailed,
    /// The server answered that it did not apply the operation, for a reason other than
    /// the precondition (not the leader, unavailable before proposing). Dropped from the
    /// check, so only for certain refusals: a proposal that may have been committed is
    /// [`Output::Unknown`].
    Failed,
    /// No answer (a timeout, a dropped connection, a crash): the operation may have taken
    /// effect at any time after its call, or never.
    Unknown,
}

/// Why a history cannot be checked: an input the checker will not guess about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidHistory {
    /// The operation's position in the history.
    pub index: usize,
    pub reason: &'static str,
}

impl fmt::Display for InvalidHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid history: operation #{}: {}", self.index, self.reason)
    }
}

impl std::error::Error for InvalidHistory {}

/// How much work a check may do before answering [`Outcome::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Search steps per key. Memory grows with steps too (the cache keeps at most one
    /// entry per step, typically tens of bytes plus a few words per concurrent operation).
    pub max_steps_per_key: u64,
    /// A wall-clock deadline for the whole check.
    pub deadline: Option<Instant>,
}

impl Budget {
    /// Generous for histories of thousands of operations per key from ~10 clients, which
    /// take up to about a million steps; a pathological key gives up after about a second
    /// in release (several in debug builds) and ~150 MB.
    pub const DEFAULT_STEPS_PER_KEY: u64 = 5_000_000;

    pub fn steps(max_steps_per_key: u64) -> Self {
        Self { max_steps_per_key, deadline: None }
    }

    /// This budget, also stopping `timeout` from now.
    pub fn within(self, timeout: Duration) -> Self {
        Self { deadline: Instant::now().checked_add(timeout), ..self }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::steps(Self::DEFAULT_STEPS_PER_KEY)
    }
}

/// The verdict on a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<V = u64> {
    /// Linearizable: every key has an order explaining every completed operation.
    Ok,
    /// Not linearizable: the first key (in key order) found without such an order.
    Violation(Box<Violation<V>>),
    /// No violation found, but the budget ran out on these keys before they were decided.
    Unknown { undecided_keys: Vec<String> },
}

impl<V> Outcome<V> {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }

    pub fn violation(&self) -> Option<&Violation<V>> {
        match self {
            Outcome::Violation(violation) => Some(violation),
            _ => None,
        }
    }
}

impl<V: fmt::Debug> fmt::Display for Outcome<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => write!(f, "linearizable"),
            Outcome::Violation(violation) => violation.fmt(f),
            Outcome::Unknown { undecided_keys } => {
                write!(f, "undecided: the check's budget ran out on keys {undecided_keys:?} (no violation found)")
            }
        }
    }
}

/// Where the search for an order got stuck on one key. The search is exhaustive, so no
/// order exists; this is the deepest attempt, which usually points right at the anomaly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation<V = u64> {
    pub key: String,
    /// The longest consistent order found, first operation first (indeterminate ones
    /// included where they were placed).
    pub linearized: Vec<Operation<V>>,
    /// The register after `linearized`.
    pub state: RegisterState<V>,
    /// The completed operation that could not be placed after `linearized`, nor anything
    /// else that would let it be placed before it returned.
    pub stuck: Operation<V>,
    /// The other completed operations that were still unplaced and overlapped `stuck`.
    pub concurrent: Vec<Operation<V>>,
}

/// How many operations of the order found a report prints, the last ones.
const REPORTED_PREFIX_TAIL: usize = 12;

impl<V: fmt::Debug> fmt::Display for Violation<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "linearizability violation on key {:?}", self.key)?;
        writeln!(f, "  no order of the history places: {}", self.stuck)?;
        let shown = self.linearized.len().min(REPORTED_PREFIX_TAIL);
        writeln!(
            f,
            "  the longest consistent order found has {} operations; its last {shown}:",
            self.linearized.len()
        )?;
        for operation in &self.linearized[self.linearized.len() - shown..] {
            writeln!(f, "    {operation}")?;
        }
        writeln!(f, "  leaving the register at {}", self.state)?;
        if self.concurrent.is_empty() {
            write!(f, "  with no other completed operation overlapping it")
        } else {
            write!(f, "  other completed operations still unplaced that overlap it:")?;
            for operation in &self.concurrent {
                write!(f, "\n    {operation}")?;
            }
            Ok(())
        }
    }
}

/// A register state as a report shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterState<V = u64> {
    /// `None` while the key is absent.
    pub value: Option<V>,
    /// `None` when the key's history never looks at versions (they are not tracked then).
    pub version: Option<u64>,
}

impl<V: fmt::Debug> fmt::Display for RegisterState<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{value:?}")?,
            None => write!(f, "absent")?,
        }
        match self.version {
            Some(version) => write!(f, " (version {version})"),
            None => Ok(()),
        }
    }
}

impl<V: fmt::Debug> fmt::Display for Operation<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.client == FINAL_READ_CLIENT {
            write!(f, "final read")?;
        } else {
            write!(f, "client {}", self.client)?;
        }
        match (self.ret, &self.output) {
            (Some(ret), output) if !matches!(output, Output::Unknown) => write!(f, " [{}..{ret}] ", self.call)?,
            _ => write!(f, " [{}..?] ", self.call)?,
        }
        match &self.input {
            Input::Read => write!(f, "read")?,
            Input::Write(value) => write!(f, "write {value:?}")?,
            Input::Cas { expected: Expected::Value(Some(value)), new } => write!(f, "cas {value:?} -> {new:?}")?,
            Input::Cas { expected: Expected::Value(None), new } => write!(f, "cas absent -> {new:?}")?,
            Input::Cas { expected: Expected::Version(version), new } => write!(f, "cas version {version} -> {new:?}")?,
        }
        match &self.output {
            Output::ReadOk(Some(value)) => write!(f, " = {value:?}"),
            Output::ReadOk(None) => write!(f, " = absent"),
            Output::ReadVersionedOk { value: Some(value), version } => write!(f, " = {value:?} (version {version})"),
            Output::ReadVersionedOk { value: None, version } => write!(f, " = absent (version {version})"),
            Output::WriteOk | Output::CasOk => write!(f, ": ok"),
            Output::CasFailed => write!(f, ": precondition failed"),
            Output::Failed => write!(f, ": not applied"),
            Output::Unknown => write!(f, ": no answer"),
        }
    }
}

/// Checks a history for linearizability, key by key, within `budget`.
pub fn check<V>(history: &[Operation<V>], budget: &Budget) -> Result<Outcome<V>, InvalidHistory>
where
    V: Clone + Eq + Hash,
{
    let mut undecided_keys = Vec::new();
    for (key, operations) in relevant_operations_by_key(history)? {
        let problem = Problem::new(&operations);
        match Search::new(&problem, budget).run() {
            Verdict::Linearizable => {}
            Verdict::Exhausted => undecided_keys.push(key.to_owned()),
            Verdict::Violation(partial) => {
                let report = Report { key, history, operations: &operations, problem: &problem };
                return Ok(Outcome::Violation(Box::new(report.violation(&partial))));
            }
        }
    }
    Ok(if undecided_keys.is_empty() { Outcome::Ok } else { Outcome::Unknown { undecided_keys } })
}

/// Checks `history` followed by one linearizable read per key, taken after the cluster
/// healed and every client stopped: `final_reads` holds each key's value then.
///
/// This is the "no acknowledged write is lost" check. A write's value missing from the
/// final read does not make it lost: a later write may have overwritten it. What a lost
/// write does make is a final value that no order of the history explains: the final
/// read, invoked after every other operation returned, must see the last write of some
/// linearization. So it is exactly the linearizability of the history with the final
/// reads appended, and the report's stuck operation is then the final read.
/// Indeterminate writes may still land before the final read, as they may have.
pub fn check_with_final_reads<V>(
    history: &[Operation<V>],
    final_reads: impl IntoIterator<Item = (String, Option<V>)>,
    budget: &Budget,
) -> Result<Outcome<V>, InvalidHistory>
where
    V: Clone + Eq + Hash,
{
    let last_time = history.iter().flat_map(|operation| [Some(operation.call), operation.ret]).flatten().max();
    let call = last_time.map_or(0, |time| time.saturating_add(1));
    let mut extended = history.to_vec();
    extended.extend(final_reads.into_iter().map(|(key, value)| Operation {
        client: FINAL_READ_CLIENT,
        key,
        call,
        ret: Some(call.saturating_add(1)),
        input: Input::Read,
        output: Output::ReadOk(value),
    }));
    check(&extended, budget)
}

/// Records a history as clients run, on one monotonic clock, from any number of threads
/// or tasks. An invocation never completed (its client crashed, its task was dropped)
/// stays indeterminate, which is what it is.
pub struct Recorder<V = u64> {
    epoch: Instant,
    operations: Mutex<Vec<Operation<V>>>,
}

/// An invoked operation awaiting its answer: hand it back to [`Recorder::complete`].
#[derive(Debug)]
pub struct Invocation {
    index: usize,
}

impl<V> Default for Recorder<V> {
    fn default() -> Self {
        Self { epoch: Instant::now(), operations: Mutex::new(Vec::new()) }
    }
}

impl<V> Recorder<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an invocation, just before the request is sent.
    pub fn invoke(&self, client: usize, key: impl Into<String>, input: Input<V>) -> Invocation {
        let call = self.now();
        let mut operations = self.operations.lock().unwrap_or_else(PoisonError::into_inner);
        operations.push(Operation { client, key: key.into(), call, ret: None, input, output: Output::Unknown });
        Invocation { index: operations.len() - 1 }
    }

    /// Records the answer, just after it arrived.
    pub fn complete(&self, invocation: Invocation, output: Output<V>) {
        let ret = self.now();
        let mut operations = self.operations.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(operation) = operations.get_mut(invocation.index) {
            operation.ret = (!matches!(output, Output::Unknown)).then_some(ret);
            operation.output = output;
        }
    }

    /// The history so far.
    pub fn history(&self) -> Vec<Operation<V>>
    where
        V: Clone,
    {
        self.operations.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

// ---------------------------------------------------------------------------------------
// Preparing a key's sub-history.

/// What an operation that matters to the check tells, still in the caller's values.
enum Observation<'h, V> {
    Read { value: Option<&'h V>, version: Option<u64> },
    Write(&'h V),
    Cas { expected: &'h Expected<V>, new: &'h V },
    CasFailed { expected: &'h Expected<V> },
}

impl<'h, V> Observation<'h, V> {
    /// The value the operation compares the register's against, if any: a read's result
    /// or a precondition's value.
    fn compared_value(&self) -> Option<&'h V> {
        match *self {
            Observation::Read { value, .. } => value,
            Observation::Cas { expected, .. } | Observation::CasFailed { expected } => match expected {
                Expected::Value(value) => value.as_ref(),
                Expected::Version(_) => None,
            },
            Observation::Write(_) => None,
        }
    }
}

/// An operation the check uses: validated, with `ret` `None` iff it is indeterminate.
struct Relevant<'h, V> {
    source: usize,
    observation: Observation<'h, V>,
    call: u64,
    ret: Option<u64>,
}

/// Validates the history and groups the operations that matter by key (in key order, so
/// reports are deterministic).
fn relevant_operations_by_key<V>(
    history: &[Operation<V>],
) -> Result<BTreeMap<&str, Vec<Relevant<'_, V>>>, InvalidHistory> {
    let mut by_key: BTreeMap<&str, Vec<Relevant<'_, V>>> = BTreeMap::new();
    for (index, operation) in history.iter().enumerate() {
        if let Some(relevant) = classify(index, operation)? {
            by_key.entry(operation.key.as_str()).or_default().push(relevant);
        }
    }
    Ok(by_key)
}

/// What one operation contributes: nothing (a definite refusal, an unanswered read), an
/// observation, or an error for an output that does not answer its input.
fn classify<V>(index: usize, operation: &Operation<V>) -> Result<Option<Relevant<'_, V>>, InvalidHistory> {
    let invalid = |reason| InvalidHistory { index, reason };
    let completed = || match operation.ret {
        None => Err(invalid("an answered operation needs its return time")),
        Some(ret) if ret < operation.call => Err(invalid("returned before it was invoked")),
        Some(ret) => Ok(Some(ret)),
    };
    let (observation, ret) = match (&operation.input, &operation.output) {
        (_, Output::Failed) | (Input::Read, Output::Unknown) => return Ok(None),
        (Input::Read, Output::ReadOk(value)) => {
            (Observation::Read { value: value.as_ref(), version: None }, completed()?)
        }
        (Input::Read, Output::ReadVersionedOk { value, version }) => {
            (Observation::Read { value: value.as_ref(), version: Some(*version) }, completed()?)
        }
        (Input::Write(value), Output::WriteOk) => (Observation::Write(value), completed()?),
        (Input::Write(value), Output::Unknown) => (Observation::Write(value), None),
        (Input::Cas { expected, new }, Output::CasOk) => (Observation::Cas { expected, new }, completed()?),
        (Input::Cas { expected, new }, Output::Unknown) => (Observation::Cas { expected, new }, None),
        (Input::Cas { expected, .. }, Output::CasFailed) => (Observation::CasFailed { expected }, completed()?),
        _ => return Err(invalid("the output does not answer the input")),
    };
    Ok(Some(Relevant { source: index, observation, call: operation.call, ret }))
}

/// A value as the search sees it: an index into the key's observed values, or [`HIDDEN`].
type ValueId = usize;

/// Every written value that no read returned and no precondition names. Nothing in the
/// history can tell such values apart (reads never return them, preconditions never match
/// them), so merging them loses nothing, and it lets states that differ only in which
/// unobserved value was written share cache entries.
const HIDDEN: ValueId = usize::MAX;

/// The key's observed values, numbered.
struct Interner<'h, V> {
    ids: HashMap<&'h V, ValueId>,
    values: Vec<&'h V>,
}

impl<'h, V: Eq + Hash> Interner<'h, V> {
    fn observing(operations: &[Relevant<'h, V>]) -> Self {
        let mut interner = Self { ids: HashMap::new(), values: Vec::new() };
        for value in operations.iter().filter_map(|operation| operation.observation.compared_value()) {
            interner.observe(value);
        }
        interner
    }

    fn observe(&mut self, value: &'h V) {
        if !self.ids.contains_key(value) {
            self.ids.insert(value, self.values.len());
            self.values.push(value);
        }
    }

    fn id(&self, value: &V) -> ValueId {
        self.ids.get(value).copied().unwrap_or(HIDDEN)
    }

    fn condition(&self, expected: &Expected<V>) -> Condition {
        match expected {
            Expected::Value(value) => Condition::Value(value.as_ref().map(|value| self.id(value))),
            Expected::Version(version) => Condition::Version(*version),
        }
    }

    fn effect(&self, observation: &Observation<'h, V>) -> Effect {
        match observation {
            Observation::Read { value, version } => {
                Effect::Read { value: value.map(|value| self.id(value)), version: *version }
            }
            Observation::Write(value) => Effect::Write(self.id(value)),
            Observation::Cas { expected, new } => Effect::Cas { expected: self.condition(expected), new: self.id(new) },
            Observation::CasFailed { expected } => Effect::CasFailed { expected: self.condition(expected) },
        }
    }
}

// ---------------------------------------------------------------------------------------
// The register model.

/// The register the search steps: cheap to copy, hash and compare.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
struct State {
    value: Option<ValueId>,
    /// Always 0 when the key's history never looks at versions, so that states differing
    /// only in a version nothing observes are one state.
    version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Condition {
    Value(Option<ValueId>),
    Version(u64),
}

/// An operation's input and output together: what it requires of the state and does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Effect {
    Read {
        value: Option<ValueId>,
        version: Option<u64>,
    },
    /// Also an indeterminate write: it can only have been applied.
    Write(ValueId),
    /// A successful compare-and-set, or an indeterminate one that took effect (one that did
    /// not is the same as leaving it out, which the search already considers).
    Cas {
        expected: Condition,
        new: ValueId,
    },
    CasFailed {
        expected: Condition,
    },
}

#[derive(Debug, Clone, Copy)]
struct Model {
    track_versions: bool,
}

impl Model {
    fn for_effects<'e>(mut effects: impl Iterator<Item = &'e Effect>) -> Self {
        let track_versions = effects.any(|effect| {
            matches!(
                effect,
                Effect::Read { version: Some(_), .. }
                    | Effect::Cas { expected: Condition::Version(_), .. }
                    | Effect::CasFailed { expected: Condition::Version(_) }
            )
        });
        Self { track_versions }
    }

    /// The state after `effect`, or `None` if `effect` cannot happen in `state`.
    fn step(self, state: State, effect: Effect) -> Option<State> {
        match effect {
            Effect::Read { value, version } => {
                (state.value == value && version.is_none_or(|version| version == state.version)).then_some(state)
            }
            Effect::Write(value) => Some(self.written(state, value)),
            Effect::Cas { expected, new } => Self::holds(state, expected).then(|| self.written(state, new)),
            Effect::CasFailed { expected } => (!Self::holds(state, expected)).then_some(state),
        }
    }

    fn written(self, state: State, value: ValueId) -> State {
        let version = if self.track_versions { state.version.saturating_add(1) } else { 0 };
        State { value: Some(value), version }
    }

    fn holds(state: State, condition: Condition) -> bool {
        match condition {
            Condition::Value(value) => state.value == value,
            Condition::Version(version) => state.version == version,
        }
    }

    /// Whether placing `next` right after the indeterminate operation of `restriction` is
    /// pointless, because some other order the search also tries reaches the same place.
    ///
    /// Take any valid order with an indeterminate U right before an operation X, where X
    /// can also happen without U. (a) If X alone leaves the state U-then-X leaves (X
    /// overwrote U), drop U. (b) If X-then-U leaves it too (they commute), swap them when X
    /// is completed, or when both are indeterminate and X comes first in [`OpRef`]'s order.
    /// The order stays valid: U has no deadline, X only moves past U, which constrains
    /// nothing, and the state after the pair is unchanged. Each rewrite drops an
    /// indeterminate operation, moves one later, or sorts two adjacent ones, so rewriting
    /// ends; an indeterminate operation left last is dropped too. So if any valid order
    /// exists, one exists where every indeterminate operation is followed by one it makes
    /// possible (or by one ordered after it that it commutes with), and the search only
    /// tries those. This keeps k pending timeouts from costing 2^k at every dead end.
    fn reducible(self, restriction: Restriction, next: OpRef, next_effect: Effect, after_both: State) -> bool {
        let Some(next_alone) = self.step(restriction.before, next_effect) else { return false };
        let absorbed = next_alone == after_both;
        let commute = self.step(next_alone, restriction.effect) == Some(after_both);
        absorbed || (commute && next < restriction.op)
    }
}

/// The search just placed the indeterminate operation `op` (doing `effect`, from state
/// `before`): the next operation must be one that placement made worthwhile
/// ([`Model::reducible`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Restriction {
    before: State,
    effect: Effect,
    op: OpRef,
}

// ---------------------------------------------------------------------------------------
// One key's search problem.

#[derive(Debug, Clone, Copy)]
struct PreparedOp {
    /// The operation's index in the key's relevant operations.
    relevant: usize,
    effect: Effect,
    call: u64,
    /// `u64::MAX` for indeterminate operations (only used for completed ones).
    ret: u64,
}

impl PreparedOp {
    /// What must hold for the operation to take effect: `None` for a write, which always
    /// can. Indeterminate operations wait in one list per precondition, so a node only
    /// looks at those that can happen in its state.
    fn precondition(&self) -> Option<Condition> {
        match self.effect {
            Effect::Cas { expected, .. } | Effect::CasFailed { expected } => Some(expected),
            Effect::Read { .. } | Effect::Write(_) => None,
        }
    }
}

/// A key's operations, split the way the search uses them.
struct Problem {
    model: Model,
    /// How many distinct values the key's operations compare against.
    observed_values: usize,
    /// Completed operations, by call time: the index is also the operation's bit in the
    /// cache, so the set of linearized ones is a run of ones and a short ragged edge.
    completed: Vec<PreparedOp>,
    /// Indeterminate operations the search considers one by one (compare-and-sets, and
    /// writes of observed values), by call time.
    indeterminate: Vec<PreparedOp>,
    /// `indeterminate`'s indices grouped by precondition, each group by call time; the
    /// group's position is its list in the search's [`Links`].
    groups: Vec<Vec<usize>>,
    group_of: HashMap<Option<Condition>, usize>,
    /// Indeterminate writes of unobserved values, by call time. They differ only in their
    /// call times, so if an order uses m of them, the m invoked earliest can stand in for
    /// them (sorted by call, each goes where the one of the same rank was: no later than
    /// that one was allowed). So only the earliest unused one is ever a candidate, and the
    /// used ones are always a prefix: a count, instead of 2^m subsets.
    hidden_writes: Vec<PreparedOp>,
}

impl Problem {
    fn new<V: Eq + Hash>(operations: &[Relevant<'_, V>]) -> Self {
        let interner = Interner::observing(operations);
        let (mut completed, mut indeterminate, mut hidden_writes) = (Vec::new(), Vec::new(), Vec::new());
        for (relevant, operation) in operations.iter().enumerate() {
            let effect = interner.effect(&operation.observation);
            let prepared =
                PreparedOp { relevant, effect, call: operation.call, ret: operation.ret.unwrap_or(u64::MAX) };
            match (operation.ret, effect) {
                (Some(_), _) => completed.push(prepared),
                (None, Effect::Write(HIDDEN)) => hidden_writes.push(prepared),
                (None, _) => indeterminate.push(prepared),
            }
        }
        for operations in [&mut completed, &mut indeterminate, &mut hidden_writes] {
            operations.sort_by_key(|operation| (operation.call, operation.relevant));
        }
        let (mut groups, mut group_of) = (Vec::<Vec<usize>>::new(), HashMap::new());
        for (index, operation) in indeterminate.iter().enumerate() {
            let group = *group_of.entry(operation.precondition()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[group].push(index);
        }
        let all = completed.iter().chain(&indeterminate).chain(&hidden_writes);
        let model = Model::for_effects(all.map(|operation| &operation.effect));
        let observed_values = interner.values.len();
        Self { model, observed_values, completed, indeterminate, groups, group_of, hidden_writes }
    }

    fn operation(&self, op: OpRef) -> &PreparedOp {
        match op {
            OpRef::Completed(index) => &self.completed[index],
            OpRef::Indeterminate(index) => &self.indeterminate[index],
            OpRef::HiddenWrite(index) => &self.hidden_writes[index],
        }
    }

    /// Completed operations' call and return events in time order; at equal times calls
    /// first, so that touching intervals count as overlapping (the permissive reading:
    /// clocks are not that precise).
    fn events_in_time_order(&self) -> Vec<usize> {
        let mut events: Vec<(u64, bool, usize)> = self
            .completed
            .iter()
            .enumerate()
            .flat_map(|(index, operation)| [(operation.call, false, index), (operation.ret, true, index)])
            .collect();
        events.sort_unstable();
        events.into_iter().map(|(_, is_return, index)| Event::id(index, is_return)).collect()
    }

    /// The list of pending indeterminate operations with this precondition, if any.
    fn group(&self, precondition: Option<Condition>) -> Option<usize> {
        self.group_of.get(&precondition).copied()
    }
}

/// An operation of a [`Problem`]. The order (completed first, then indeterminate, then
/// hidden writes, each by call time) is the one [`Model::reducible`] sorts commuting
/// indeterminate operations by; hidden writes sorting last among them and by call keeps
/// that consistent with using the earliest unused hidden write first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum OpRef {
    Completed(usize),
    Indeterminate(usize),
    HiddenWrite(usize),
}

// ---------------------------------------------------------------------------------------
// The search's data structures.

/// A completed operation's call or return. Event ids are `2 * operation` for calls and
/// `2 * operation + 1` for returns.
enum Event {
    Call(usize),
    Return(usize),
}

impl Event {
    fn id(completed: usize, is_return: bool) -> usize {
        2 * completed + usize::from(is_return)
    }

    fn of(id: usize) -> Self {
        if id.is_multiple_of(2) { Event::Call(id / 2) } else { Event::Return(id / 2) }
    }
}

/// Doubly linked lists over items `0..n`, each item in at most one list, where a removed
/// item keeps its own links ("dancing links"): removals undone in reverse order restore
/// the lists exactly, in O(1), which is what backtracking needs. Slots are items offset
/// by two sentinels per list (list `l`'s head is slot `2l`, its tail `2l + 1`), so that
/// every list operation is branch-free.
struct Links {
    next: Vec<usize>,
    prev: Vec<usize>,
    sentinels: usize,
}

impl Links {
    fn new(items: usize, lists: &[Vec<usize>]) -> Self {
        let sentinels = 2 * lists.len();
        let slots = sentinels + items;
        let mut links = Self { next: vec![0; slots], prev: vec![0; slots], sentinels };
        for (list, members) in lists.iter().enumerate() {
            let mut last = 2 * list;
            for slot in members.iter().map(|item| sentinels + item).chain([2 * list + 1]) {
                links.next[last] = slot;
                links.prev[slot] = last;
                last = slot;
            }
        }
        links
    }

    fn first(&self, list: usize) -> usize {
        self.next[2 * list]
    }

    fn next(&self, slot: usize) -> usize {
        self.next[slot]
    }

    /// The item at `slot`, `None` at a list's end.
    fn item(&self, slot: usize) -> Option<usize> {
        slot.checked_sub(self.sentinels)
    }

    fn is_empty(&self, list: usize) -> bool {
        self.item(self.first(list)).is_none()
    }

    fn remove(&mut self, item: usize) {
        let slot = self.sentinels + item;
        let (prev, next) = (self.prev[slot], self.next[slot]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn restore(&mut self, item: usize) {
        let slot = self.sentinels + item;
        let (prev, next) = (self.prev[slot], self.next[slot]);
        self.next[prev] = slot;
        self.prev[next] = slot;
    }
}

struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    fn new(bits: usize) -> Self {
        Self { words: vec![0; bits.div_ceil(64)] }
    }

    fn flip(&mut self, bit: usize) {
        self.words[bit / 64] ^= 1 << (bit % 64);
    }

    /// The words from the first not-full one to the last non-empty one, with the position
    /// of the first: determines the set (the words before are full, the ones after empty),
    /// and stays short because linearized completed operations are a prefix by call time
    /// plus the few overlapping the first unplaced one.
    fn window(&self) -> (usize, &[u64]) {
        let start = self.words.iter().position(|word| *word != u64::MAX).unwrap_or(self.words.len());
        let end = self.words.iter().rposition(|word| *word != 0).map_or(0, |last| last + 1).max(start);
        (start, &self.words[start..end])
    }
}

/// The set of linearized operations, with an incrementally kept hash.
struct Linearized {
    completed: Bitset,
    indeterminate: Bitset,
    hidden_writes_used: usize,
    /// Zobrist hashing: the XOR of a fixed random word per linearized operation, so adding
    /// or removing one is O(1) and equal sets hash equal whatever the order.
    hash: u64,
}

impl Linearized {
    fn new(problem: &Problem) -> Self {
        Self {
            completed: Bitset::new(problem.completed.len()),
            indeterminate: Bitset::new(problem.indeterminate.len()),
            hidden_writes_used: 0,
            hash: 0,
        }
    }

    fn add(&mut self, op: OpRef) {
        match op {
            OpRef::Completed(index) => self.toggle_completed(index),
            OpRef::Indeterminate(index) => self.toggle_indeterminate(index),
            OpRef::HiddenWrite(_) => self.hidden_writes_used += 1,
        }
    }

    fn remove(&mut self, op: OpRef) {
        match op {
            OpRef::Completed(index) => self.toggle_completed(index),
            OpRef::Indeterminate(index) => self.toggle_indeterminate(index),
            OpRef::HiddenWrite(_) => self.hidden_writes_used -= 1,
        }
    }

    fn toggle_completed(&mut self, index: usize) {
        self.completed.flip(index);
        self.hash ^= zobrist(2 * index as u64);
    }

    fn toggle_indeterminate(&mut self, index: usize) {
        self.indeterminate.flip(index);
        self.hash ^= zobrist(2 * index as u64 + 1);
    }
}

/// What the operations not yet placed can still observe, kept up to date as the search
/// places and unplaces them, to refuse placements after which nothing can follow.
struct Outlook {
    track_versions: bool,
    observed_values: usize,
    /// Per value (see [`Outlook::slot`]): pending operations whose outcome compares the
    /// register's value against it.
    compared: Vec<usize>,
    /// Per value: pending failed compare-and-sets that expected it.
    failed_expecting: Vec<usize>,
    /// The versions pending completed operations must see exactly, with how many need each.
    version_ceilings: BTreeMap<u64, usize>,
}

impl Outlook {
    fn new(problem: &Problem) -> Self {
        let values = problem.observed_values + 2;
        let mut outlook = Self {
            track_versions: problem.model.track_versions,
            observed_values: problem.observed_values,
            compared: vec![0; values],
            failed_expecting: vec![0; values],
            version_ceilings: BTreeMap::new(),
        };
        for operation in &problem.completed {
            outlook.set_pending(operation.effect, true, true);
        }
        for operation in &problem.indeterminate {
            outlook.set_pending(operation.effect, false, true);
        }
        outlook
    }

    /// A value's counter: observed values by id, then absent, then [`HIDDEN`].
    fn slot(&self, value: Option<ValueId>) -> usize {
        value.map_or(self.observed_values, |id| id.min(self.observed_values + 1))
    }

    fn set_pending(&mut self, effect: Effect, completed: bool, pending: bool) {
        let adjust = |count: &mut usize| if pending { *count += 1 } else { *count -= 1 };
        let (compared, failed, ceiling) = match effect {
            Effect::Read { value, version } => (Some(value), None, version),
            Effect::Cas { expected: Condition::Value(value), .. } => (Some(value), None, None),
            Effect::Cas { expected: Condition::Version(version), .. } => (None, None, Some(version)),
            Effect::CasFailed { expected: Condition::Value(value) } => (Some(value), Some(value), None),
            Effect::CasFailed { expected: Condition::Version(_) } | Effect::Write(_) => (None, None, None),
        };
        if let Some(value) = compared {
            let slot = self.slot(value);
            adjust(&mut self.compared[slot]);
        }
        if let Some(value) = failed {
            let slot = self.slot(value);
            adjust(&mut self.failed_expecting[slot]);
        }
        if let Some(version) = ceiling.filter(|_| completed) {
            let count = self.version_ceilings.entry(version).or_default();
            adjust(count);
            if *count == 0 {
                self.version_ceilings.remove(&version);
            }
        }
    }

    /// Whether anything could still follow `op` taking the register from `before` to
    /// `after`.
    ///
    /// With versions: they only grow, so past a version some pending completed operation
    /// must see exactly, that operation can never be placed.
    ///
    /// Without: an indeterminate operation is only worth placing right before one it makes
    /// possible ([`Model::reducible`]), and with writes overwriting each other without a
    /// trace, only an operation comparing the register's value can tell: one comparing it
    /// against the value just written, or a failed compare-and-set that expected the value
    /// just overwritten. With none pending, the placement is pointless. This retires the
    /// timeouts whose values are no longer looked at, instead of trying them at every dead
    /// end for the rest of the history.
    fn allows(&self, op: OpRef, effect: Effect, before: State, after: State) -> bool {
        if self.track_versions {
            return self.version_ceilings.first_key_value().is_none_or(|(ceiling, _)| after.version <= *ceiling);
        }
        match (op, effect) {
            (OpRef::Completed(_), _) => true,
            (_, Effect::Write(written) | Effect::Cas { new: written, .. }) => {
                self.compared[self.slot(Some(written))] > 0 || self.failed_expecting[self.slot(before.value)] > 0
            }
            _ => true,
        }
    }
}

/// A fixed pseudo-random word per operation (SplitMix64's finalizer).
fn zobrist(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What identifies a search node cheaply; nodes sharing it are told apart by their sets.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct NodeSummary {
    set_hash: u64,
    hidden_writes_used: usize,
    state: State,
    /// Part of the node: a node reached through an indeterminate operation explores only
    /// the continuations that operation makes possible, so it stands for less.
    restriction: Option<Restriction>,
}

/// A cached node's sets, exactly (hashes only find candidates; a collision never prunes).
struct NodeSets {
    completed_start: usize,
    completed: Box<[u64]>,
    indeterminate: Box<[u64]>,
}

/// Lowe's cache of the nodes already explored.
#[derive(Default)]
struct Memo {
    seen: HashMap<NodeSummary, Vec<NodeSets>>,
}

impl Memo {
    /// Records the node; false if it was already there (explored, or being explored).
    fn insert(&mut self, linearized: &Linearized, state: State, restriction: Option<Restriction>) -> bool {
        let summary = NodeSummary {
            set_hash: linearized.hash,
            hidden_writes_used: linearized.hidden_writes_used,
            state,
            restriction,
        };
        let (completed_start, completed) = linearized.completed.window();
        let indeterminate = &linearized.indeterminate.words[..];
        let nodes = self.seen.entry(summary).or_default();
        let seen = nodes.iter().any(|node| {
            node.completed_start == completed_start
                && *node.completed == *completed
                && *node.indeterminate == *indeterminate
        });
        if !seen {
            nodes.push(NodeSets { completed_start, completed: completed.into(), indeterminate: indeterminate.into() });
        }
        !seen
    }
}

/// Which indeterminate operations a node tries, in this order, once no completed one fits.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Compare-and-sets expecting the current value.
    ValueCas,
    /// Compare-and-sets expecting the current version.
    VersionCas,
    /// Writes of observed values.
    Writes,
    /// The earliest unused write of an unobserved value.
    HiddenWrite,
}

impl Phase {
    fn after(self) -> Option<Phase> {
        match self {
            Phase::ValueCas => Some(Phase::VersionCas),
            Phase::VersionCas => Some(Phase::Writes),
            Phase::Writes => Some(Phase::HiddenWrite),
            Phase::HiddenWrite => None,
        }
    }
}

/// Where the search goes next.
#[derive(Debug, Clone, Copy)]
enum Cursor {
    /// At this slot of the event list: try the call there, or, at a return, stop trying
    /// completed operations.
    Event(usize),
    /// At this slot of a list of indeterminate operations, trying those invoked before
    /// `stuck`'s return.
    Indeterminate { phase: Phase, slot: usize, stuck: usize },
    /// Trying the earliest unused hidden write.
    HiddenWrite { stuck: usize },
    /// Nothing fits before `stuck`'s return: undo the last placement.
    Backtrack { stuck: usize },
}

/// A placement on the search's stack, with what undoing it restores.
struct Frame {
    op: OpRef,
    state: State,
    restriction: Option<Restriction>,
    resume: Cursor,
}

/// The deepest dead end found, for the report.
struct Partial {
    linearized: Vec<OpRef>,
    state: State,
    stuck: usize,
    concurrent: Vec<usize>,
}

enum Verdict {
    Linearizable,
    Violation(Partial),
    Exhausted,
}

/// How often the search looks at the clock, in steps: `Instant::now` is not free.
const DEADLINE_CHECK_INTERVAL: u64 = 1024;

/// The depth-first search over one key, iterative so deep histories cannot overflow the
/// stack.
struct Search<'p> {
    problem: &'p Problem,
    budget: &'p Budget,
    /// The pending completed operations' events, one list in time order.
    events: Links,
    /// The pending indeterminate operations, one list per [`Problem::groups`] group.
    indeterminate: Links,
    linearized: Linearized,
    outlook: Outlook,
    state: State,
    restriction: Option<Restriction>,
    stack: Vec<Frame>,
    memo: Memo,
    deepest: Option<Partial>,
    steps: u64,
}

impl<'p> Search<'p> {
    fn new(problem: &'p Problem, budget: &'p Budget) -> Self {
        let events = problem.events_in_time_order();
        Self {
            problem,
            budget,
            events: Links::new(events.len(), &[events]),
            indeterminate: Links::new(problem.indeterminate.len(), &problem.groups),
            linearized: Linearized::new(problem),
            outlook: Outlook::new(problem),
            state: State::default(),
            restriction: None,
            stack: Vec::new(),
            memo: Memo::default(),
            deepest: None,
            steps: 0,
        }
    }

    fn run(mut self) -> Verdict {
        let mut cursor = Cursor::Event(self.events.first(0));
        loop {
            // Every completed operation placed: the indeterminate ones left never happened.
            if self.events.is_empty(0) {
                return Verdict::Linearizable;
            }
            if self.out_of_budget() {
                return Verdict::Exhausted;
            }
            cursor = match cursor {
                Cursor::Event(slot) => self.at_event(slot),
                Cursor::Indeterminate { phase, slot, stuck } => self.at_indeterminate(phase, slot, stuck),
                Cursor::HiddenWrite { stuck } => self.at_hidden_write(stuck),
                Cursor::Backtrack { stuck } => {
                    self.note_dead_end(stuck);
                    match self.stack.pop() {
                        Some(frame) => self.undo(frame),
                        None => return Verdict::Violation(self.deepest.take().unwrap_or_else(|| self.dead_end(stuck))),
                    }
                }
            };
        }
    }

    fn out_of_budget(&mut self) -> bool {
        self.steps += 1;
        self.steps > self.budget.max_steps_per_key
            || (self.steps.is_multiple_of(DEADLINE_CHECK_INTERVAL)
                && self.budget.deadline.is_some_and(|deadline| Instant::now() >= deadline))
    }

    /// Completed operations come first: they must all be placed, and trying them before
    /// the optional indeterminate ones finds the usual, mostly sequential order at once.
    fn at_event(&mut self, slot: usize) -> Cursor {
        // The list is never empty here, and a pending call is always followed by its return.
        let Some(id) = self.events.item(slot) else { unreachable!("the event list ended before a return") };
        match Event::of(id) {
            Event::Call(index) => self.try_place(OpRef::Completed(index), Cursor::Event(self.events.next(slot))),
            // The earliest pending return: everything placeable now was called before it.
            Event::Return(stuck) => self.enter(Some(Phase::ValueCas), stuck),
        }
    }

    /// Starts trying the indeterminate operations of `phase`, or of the first later phase
    /// with any that can happen in this state.
    fn enter(&self, mut phase: Option<Phase>, stuck: usize) -> Cursor {
        while let Some(current) = phase {
            let precondition = match current {
                _ if self.writes_are_pointless() && matches!(current, Phase::Writes | Phase::HiddenWrite) => None,
                Phase::ValueCas => Some(Some(Condition::Value(self.state.value))),
                Phase::VersionCas => Some(Some(Condition::Version(self.state.version))),
                Phase::Writes => Some(None),
                Phase::HiddenWrite => return Cursor::HiddenWrite { stuck },
            };
            if let Some(group) = precondition.and_then(|precondition| self.problem.group(precondition)) {
                return Cursor::Indeterminate { phase: current, slot: self.indeterminate.first(group), stuck };
            }
            phase = current.after();
        }
        Cursor::Backtrack { stuck }
    }

    /// Right after an indeterminate operation, when versions are not tracked, a write
    /// would overwrite its only trace: [`Model::reducible`] would refuse every one, so the
    /// search skips them all at once.
    fn writes_are_pointless(&self) -> bool {
        self.restriction.is_some() && !self.problem.model.track_versions
    }

    fn at_indeterminate(&mut self, phase: Phase, slot: usize, stuck: usize) -> Cursor {
        let deadline = self.problem.completed[stuck].ret;
        match self.indeterminate.item(slot) {
            Some(index) if self.problem.indeterminate[index].call <= deadline => {
                let resume = Cursor::Indeterminate { phase, slot: self.indeterminate.next(slot), stuck };
                self.try_place(OpRef::Indeterminate(index), resume)
            }
            // The list's end, or operations invoked after `stuck` returned (sorted by call).
            _ => self.enter(phase.after(), stuck),
        }
    }

    /// Only the earliest unused hidden write is a candidate (see [`Problem::hidden_writes`]).
    fn at_hidden_write(&mut self, stuck: usize) -> Cursor {
        let next = self.linearized.hidden_writes_used;
        match self.problem.hidden_writes.get(next) {
            Some(write) if write.call <= self.problem.completed[stuck].ret => {
                self.try_place(OpRef::HiddenWrite(next), Cursor::Backtrack { stuck })
            }
            _ => Cursor::Backtrack { stuck },
        }
    }

    /// Places `op` next if the register allows it and the node is new, and restarts from
    /// the first pending event; otherwise goes on to `resume`.
    fn try_place(&mut self, op: OpRef, resume: Cursor) -> Cursor {
        let model = self.problem.model;
        let effect = self.problem.operation(op).effect;
        let Some(next) = model.step(self.state, effect) else { return resume };
        if self.restriction.is_some_and(|restriction| model.reducible(restriction, op, effect, next)) {
            return resume;
        }
        let restriction = match op {
            OpRef::Completed(_) => None,
            OpRef::Indeterminate(_) | OpRef::HiddenWrite(_) => Some(Restriction { before: self.state, effect, op }),
        };
        // Lifted first, so that the outlook is about the operations that would follow it.
        self.lift(op);
        self.linearized.add(op);
        if !self.outlook.allows(op, effect, self.state, next) || !self.memo.insert(&self.linearized, next, restriction)
        {
            self.linearized.remove(op);
            self.unlift(op);
            return resume;
        }
        self.stack.push(Frame { op, state: self.state, restriction: self.restriction, resume });
        self.state = next;
        self.restriction = restriction;
        Cursor::Event(self.events.first(0))
    }

    fn undo(&mut self, frame: Frame) -> Cursor {
        self.unlift(frame.op);
        self.linearized.remove(frame.op);
        self.state = frame.state;
        self.restriction = frame.restriction;
        frame.resume
    }

    fn lift(&mut self, op: OpRef) {
        match op {
            OpRef::Completed(index) => {
                self.events.remove(Event::id(index, false));
                self.events.remove(Event::id(index, true));
                self.outlook.set_pending(self.problem.completed[index].effect, true, false);
            }
            OpRef::Indeterminate(index) => {
                self.indeterminate.remove(index);
                self.outlook.set_pending(self.problem.indeterminate[index].effect, false, false);
            }
            OpRef::HiddenWrite(_) => {}
        }
    }

    fn unlift(&mut self, op: OpRef) {
        match op {
            OpRef::Completed(index) => {
                self.events.restore(Event::id(index, true));
                self.events.restore(Event::id(index, false));
                self.outlook.set_pending(self.problem.completed[index].effect, true, true);
            }
            OpRef::Indeterminate(index) => {
                self.indeterminate.restore(index);
                self.outlook.set_pending(self.problem.indeterminate[index].effect, false, true);
            }
            OpRef::HiddenWrite(_) => {}
        }
    }

    /// Keeps the deepest dead end for the report. Dead ends right after an indeterminate
    /// operation are skipped: they only say that operation did not help, and the dead end
    /// before it, reported instead, says more.
    fn note_dead_end(&mut self, stuck: usize) {
        let deeper = self.deepest.as_ref().is_none_or(|deepest| self.stack.len() > deepest.linearized.len());
        if self.restriction.is_none() && deeper {
            self.deepest = Some(self.dead_end(stuck));
        }
    }

    fn dead_end(&self, stuck: usize) -> Partial {
        let mut concurrent = Vec::new();
        let mut slot = self.events.first(0);
        while let Some(id) = self.events.item(slot) {
            match Event::of(id) {
                Event::Return(index) if index == stuck => break,
                Event::Call(index) if index != stuck => concurrent.push(index),
                _ => {}
            }
            slot = self.events.next(slot);
        }
        let linearized = self.stack.iter().map(|frame| frame.op).collect();
        Partial { linearized, state: self.state, stuck, concurrent }
    }
}

/// Turns a dead end back into the caller's operations and values.
struct Report<'r, 'h, V> {
    key: &'h str,
    history: &'h [Operation<V>],
    operations: &'r [Relevant<'h, V>],
    problem: &'r Problem,
}

impl<V: Clone> Report<'_, '_, V> {
    fn violation(&self, partial: &Partial) -> Violation<V> {
        Violation {
            key: self.key.to_owned(),
            linearized: partial.linearized.iter().map(|op| self.operation(*op)).collect(),
            state: self.state(partial),
            stuck: self.operation(OpRef::Completed(partial.stuck)),
            concurrent: partial.concurrent.iter().map(|index| self.operation(OpRef::Completed(*index))).collect(),
        }
    }

    fn relevant(&self, op: OpRef) -> &Relevant<'_, V> {
        &self.operations[self.problem.operation(op).relevant]
    }

    fn operation(&self, op: OpRef) -> Operation<V> {
        self.history[self.relevant(op).source].clone()
    }

    /// The register after `partial`'s order. The value is the last one written there, in
    /// the caller's terms (the search itself merged unobserved values).
    fn state(&self, partial: &Partial) -> RegisterState<V> {
        let value = partial.linearized.iter().rev().find_map(|op| match self.relevant(*op).observation {
            Observation::Write(value) | Observation::Cas { new: value, .. } => Some(value.clone()),
            Observation::Read { .. } | Observation::CasFailed { .. } => None,
        });
        RegisterState { value, version: self.problem.model.track_versions.then_some(partial.state.version) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "x";

    fn operation(client: usize, call: u64, ret: Option<u64>, input: Input, output: Output) -> Operation {
        Operation { client, key: KEY.to_owned(), call, ret, input, output }
    }

    fn read(client: usize, call: u64, ret: u64, value: Option<u64>) -> Operation {
        operation(client, call, Some(ret), Input::Read, Output::ReadOk(value))
    }

    fn read_versioned(client: usize, call: u64, ret: u64, value: Option<u64>, version: u64) -> Operation {
        operation(client, call, Some(ret), Input::Read, Output::ReadVersionedOk { value, version })
    }

    fn write(client: usize, call: u64, ret: u64, value: u64) -> Operation {
        operation(client, call, Some(ret), Input::Write(value), Output::WriteOk)
    }

    fn write_unanswered(client: usize, call: u64, value: u64) -> Operation {
        operation(client, call, None, Input::Write(value), Output::Unknown)
    }

    fn cas(client: usize, call: u64, ret: u64, expected: Option<u64>, new: u64, applied: bool) -> Operation {
        let output = if applied { Output::CasOk } else { Output::CasFailed };
        operation(client, call, Some(ret), Input::Cas { expected: Expected::Value(expected), new }, output)
    }

    fn cas_version(client: usize, call: u64, ret: u64, version: u64, new: u64, applied: bool) -> Operation {
        let output = if applied { Output::CasOk } else { Output::CasFailed };
        operation(client, call, Some(ret), Input::Cas { expected: Expected::Version(version), new }, output)
    }

    fn check_default(history: &[Operation]) -> Outcome {
        check(history, &Budget::default()).expect("a well-formed history")
    }

    #[track_caller]
    fn assert_linearizable(history: &[Operation]) {
        let outcome = check_default(history);
        assert!(outcome.is_ok(), "expected linearizable, got: {outcome}");
    }

    #[track_caller]
    fn assert_violation(history: &[Operation]) -> Violation {
        match check_default(history) {
            Outcome::Violation(violation) => *violation,
            other => panic!("expected a violation, got: {other}"),
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        assert_linearizable(&[
            read(0, 0, 1, None),
            write(0, 2, 3, 1),
            read(1, 4, 5, Some(1)),
            write(1, 6, 7, 2),
            read(0, 8, 9, Some(2)),
        ]);
        assert_linearizable(&[]);
    }

    #[test]
    fn overlapping_writes_may_be_read_in_either_order() {
        for (first, second) in [(1, 2), (2, 1)] {
            assert_linearizable(&[
                write(0, 0, 10, 1),
                write(1, 5, 15, 2),
                read(2, 20, 21, Some(first)),
                read(2, 22, 23, Some(first)),
            ]);
            // A read overlapping both may see either, and a later one the other.
            assert_linearizable(&[
                write(0, 0, 10, 1),
                write(1, 5, 15, 2),
                read(2, 6, 12, Some(first)),
                read(2, 16, 17, Some(second)),
            ]);
        }
    }

    #[test]
    fn touching_intervals_count_as_overlapping() {
        assert_linearizable(&[write(0, 0, 10, 1), read(1, 10, 20, None)]);
    }

    #[test]
    fn cas_chains_with_successes_and_failures_are_linearizable() {
        assert_linearizable(&[
            cas(0, 0, 1, None, 1, true),
            cas(1, 2, 3, None, 9, false),
            cas(0, 4, 5, Some(1), 2, true),
            cas(1, 6, 7, Some(1), 3, false),
            cas(2, 8, 9, Some(2), 3, true),
            read(0, 10, 11, Some(3)),
        ]);
        // Two racing CASes on the same expected value: exactly one wins.
        assert_linearizable(&[
            write(0, 0, 1, 1),
            cas(1, 2, 10, Some(1), 2, true),
            cas(2, 3, 11, Some(1), 3, false),
            read(0, 12, 13, Some(2)),
        ]);
        assert_linearizable(&[
            cas_version(0, 0, 1, 0, 1, true),
            cas_version(1, 2, 10, 1, 2, true),
            cas_version(2, 3, 11, 1, 3, false),
            read_versioned(0, 12, 13, Some(2), 2),
        ]);
    }

    #[test]
    fn an_unanswered_write_that_took_effect_is_accepted() {
        assert_linearizable(&[write(0, 0, 1, 1), write_unanswered(1, 2, 2), read(2, 10, 11, Some(2))]);
        // Even long after its client gave up, and before the value is read back.
        assert_linearizable(&[
            write(0, 0, 1, 1),
            write_unanswered(1, 2, 2),
            read(2, 10, 11, Some(1)),
            read(2, 20, 21, Some(2)),
            read(2, 30, 31, Some(2)),
        ]);
    }

    #[test]
    fn an_unanswered_write_that_never_happened_is_accepted() {
        // The only explanation: the unanswered write never took effect.
        assert_linearizable(&[
            write(0, 0, 1, 1),
            write_unanswered(1, 2, 2),
            read(2, 10, 11, Some(1)),
            write(0, 12, 13, 3),
            read(2, 20, 21, Some(3)),
        ]);
        assert_linearizable(&[write(0, 0, 1, 1), write_unanswered(1, 2, 2), read_versioned(2, 10, 11, Some(1), 1)]);
    }

    #[test]
    fn an_unanswered_write_cannot_be_read_before_it_was_invoked() {
        assert_violation(&[read(0, 0, 1, Some(2)), write_unanswered(1, 5, 2)]);
    }

    #[test]
    fn an_unanswered_cas_may_or_may_not_have_applied() {
        let unanswered_cas =
            operation(1, 2, None, Input::Cas { expected: Expected::Value(Some(1)), new: 2 }, Output::Unknown);
        assert_linearizable(&[write(0, 0, 1, 1), unanswered_cas.clone(), read(0, 10, 11, Some(2))]);
        assert_linearizable(&[write(0, 0, 1, 1), unanswered_cas.clone(), read(0, 10, 11, Some(1))]);
        // But only where its precondition held.
        assert_violation(&[write(0, 0, 1, 5), unanswered_cas, read(0, 10, 11, Some(2))]);
    }

    #[test]
    fn versioned_reads_count_the_unanswered_writes_that_took_effect() {
        let history = |version| {
            vec![
                write(0, 0, 1, 1),
                write_unanswered(1, 2, 5),
                write_unanswered(2, 3, 6),
                write_unanswered(3, 4, 7),
                read_versioned(0, 10, 11, Some(7), version),
            ]
        };
        for version in [2, 3, 4] {
            assert_linearizable(&history(version));
        }
        for version in [1, 5] {
            assert_violation(&history(version));
        }
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_a_violation() {
        let violation = assert_violation(&[write(0, 0, 1, 1), write(0, 2, 3, 2), read(1, 4, 5, Some(1))]);
        assert_eq!(violation.key, KEY);
        assert_eq!(violation.stuck, read(1, 4, 5, Some(1)));
        assert_eq!(violation.linearized, [write(0, 0, 1, 1), write(0, 2, 3, 2)]);
        assert_eq!(violation.state, RegisterState { value: Some(2), version: None });
    }

    #[test]
    fn a_read_of_a_value_never_written_is_a_violation() {
        let violation = assert_violation(&[write(0, 0, 1, 1), read(1, 2, 3, Some(1)), read(1, 4, 5, Some(42))]);
        assert_eq!(violation.stuck, read(1, 4, 5, Some(42)));
        let report = violation.to_string();
        assert!(report.contains("key \"x\"") && report.contains("client 1 [4..5] read = 42"), "{report}");
    }

    #[test]
    fn two_sequential_cas_on_the_same_expectation_cannot_both_succeed() {
        assert_violation(&[write(0, 0, 1, 1), cas(1, 2, 3, Some(1), 2, true), cas(2, 4, 5, Some(1), 3, true)]);
        assert_violation(&[write(0, 0, 1, 1), cas_version(1, 2, 3, 1, 2, true), cas_version(2, 4, 5, 1, 3, true)]);
        // A failed CAS is an observation too: the value was not 1, yet nothing changed it.
        assert_violation(&[write(0, 0, 1, 1), cas(1, 2, 3, Some(1), 2, false)]);
    }

    #[test]
    fn a_read_going_back_in_time_is_a_violation() {
        assert_violation(&[write(0, 0, 1, 1), write(0, 2, 3, 2), read(1, 4, 5, Some(2)), read(2, 6, 7, Some(1))]);
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught_by_the_final_read() {
        let history = [write(0, 0, 10, 1), write(1, 20, 30, 2), write_unanswered(2, 40, 3)];
        let final_read = |value| check_with_final_reads(&history, [(KEY.to_owned(), value)], &Budget::default());
        for value in [Some(2), Some(3)] {
            assert!(final_read(value).expect("well formed").is_ok(), "final value {value:?}");
        }
        for value in [Some(1), None] {
            let outcome = final_read(value).expect("well formed");
            let violation = outcome.violation().expect("a lost write");
            assert_eq!(violation.stuck.client, FINAL_READ_CLIENT);
            assert!(outcome.to_string().contains("final read"), "{outcome}");
        }
        // An overwritten write is not lost: with the two writes overlapping, either may be last.
        let racing = [write(0, 0, 10, 1), write(1, 5, 15, 2)];
        let outcome = check_with_final_reads(&racing, [(KEY.to_owned(), Some(1))], &Budget::default());
        assert!(outcome.expect("well formed").is_ok());
        // A key nobody wrote reads absent.
        let outcome = check_with_final_reads(&racing, [("y".to_owned(), None)], &Budget::default());
        assert!(outcome.expect("well formed").is_ok());
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut history = vec![write(0, 0, 1, 1), read(1, 2, 3, Some(1))];
        let mut other = [write(0, 0, 1, 7), read(1, 2, 3, None)];
        for operation in &mut other {
            operation.key = "y".to_owned();
        }
        history.extend(other);
        // The same value on another key explains nothing here.
        assert_eq!(assert_violation(&history).key, "y");
    }

    #[test]
    fn definite_refusals_and_unanswered_reads_are_ignored() {
        assert_linearizable(&[
            write(0, 0, 1, 1),
            operation(1, 2, Some(3), Input::Write(2), Output::Failed),
            operation(2, 4, None, Input::Read, Output::Unknown),
            read(0, 10, 11, Some(1)),
        ]);
    }

    #[test]
    fn malformed_histories_are_rejected() {
        let budget = Budget::default();
        let backwards = [write(0, 0, 1, 1), write(0, 5, 4, 2)];
        assert_eq!(check(&backwards, &budget).unwrap_err().index, 1);
        let unanswered = [operation(0, 0, None, Input::Write(1), Output::WriteOk)];
        assert!(check(&unanswered, &budget).is_err());
        let mismatched = [operation(0, 0, Some(1), Input::Read, Output::CasOk)];
        assert!(check(&mismatched, &budget).is_err());
    }

    #[test]
    fn the_recorder_keeps_times_in_order_and_unanswered_operations_indeterminate() {
        let recorder = Recorder::new();
        let first = recorder.invoke(0, KEY, Input::Write(1));
        recorder.complete(first, Output::WriteOk);
        let _crashed = recorder.invoke(1, KEY, Input::Write(2));
        let timed_out = recorder.invoke(2, KEY, Input::Write(3));
        recorder.complete(timed_out, Output::Unknown);
        let last = recorder.invoke(0, KEY, Input::Read);
        recorder.complete(last, Output::ReadOk(Some(3)));
        let history = recorder.history();
        assert!(history[0].ret.is_some_and(|ret| ret >= history[0].call && ret <= history[3].call));
        assert_eq!((history[1].ret, &history[1].output), (None, &Output::Unknown));
        assert_eq!(history[2].ret, None);
        assert_linearizable(&history);
    }

    // ------------------------------------------------------------------------------------
    // Generated histories.

    /// A value no generated operation writes.
    const NEVER_WRITTEN: u64 = u64::MAX;

    struct Shape {
        clients: usize,
        operations_per_client: usize,
        keys: usize,
        /// Whether CASes expect versions and reads report them (else values throughout).
        versions: bool,
        /// Percent of the operations left unanswered; half of those never take effect.
        unanswered_percent: u8,
    }

    /// An operation being generated: its interval, and when it takes effect, if it does.
    struct Planned {
        operation: Operation,
        takes_effect_at: Option<u64>,
    }

    /// A history of a real register, linearizable by construction: every operation takes
    /// effect at a random instant of its interval (an unanswered one at any instant after
    /// its call, or never), and its output is what a sequential register gives in that order.
    fn generate(rng: &mut fastrand::Rng, shape: &Shape) -> Vec<Operation> {
        let mut intervals = Vec::new();
        for client in 0..shape.clients {
            let mut time = rng.u64(0..20);
            for _ in 0..shape.operations_per_client {
                let call = time + rng.u64(0..10);
                let ret = call + rng.u64(1..40);
                time = ret;
                intervals.push((call, ret, client));
            }
        }
        // Inputs are chosen in call order, so CASes can expect recent writes and often win.
        intervals.sort_unstable();
        let mut written: HashMap<String, Vec<u64>> = HashMap::new();
        let mut planned = Vec::new();
        for (new, (call, ret, client)) in (1..).zip(intervals) {
            let key = format!("k{}", rng.usize(0..shape.keys));
            let written = written.entry(key.clone()).or_default();
            let input = match rng.u8(0..4) {
                0 | 1 => Input::Read,
                2 => Input::Write(new),
                _ => Input::Cas { expected: recent_expectation(rng, written, shape.versions), new },
            };
            if input != Input::Read {
                written.push(new);
            }
            let unanswered = rng.u8(0..100) < shape.unanswered_percent;
            let takes_effect_at = match unanswered {
                false => Some(rng.u64(call..=ret)),
                true => rng.bool().then(|| rng.u64(call..=call + 200)),
            };
            let ret = (!unanswered).then_some(ret);
            let operation = Operation { client, key, call, ret, input, output: Output::Unknown };
            planned.push(Planned { operation, takes_effect_at });
        }
        apply_in_effect_order(rng, &mut planned, shape.versions);
        planned.into_iter().map(|planned| planned.operation).collect()
    }

    /// One of the last few values attempted on the key, or the matching version.
    fn recent_expectation(rng: &mut fastrand::Rng, written: &[u64], versions: bool) -> Expected {
        let back = rng.usize(0..3);
        if versions {
            Expected::Version(written.len().saturating_sub(back) as u64)
        } else {
            Expected::Value(written.len().checked_sub(back + 1).and_then(|index| written.get(index).copied()))
        }
    }

    /// Runs the planned operations through a sequential register per key, in the order they
    /// take effect, filling in the outputs of the answered ones.
    fn apply_in_effect_order(rng: &mut fastrand::Rng, planned: &mut [Planned], versions: bool) {
        let mut order: Vec<(u64, u64, usize)> = planned
            .iter()
            .enumerate()
            .filter_map(|(index, planned)| planned.takes_effect_at.map(|at| (at, rng.u64(..), index)))
            .collect();
        order.sort_unstable();
        let mut registers: HashMap<String, (Option<u64>, u64)> = HashMap::new();
        for (_, _, index) in order {
            let operation = &mut planned[index].operation;
            let (value, version) = registers.entry(operation.key.clone()).or_default();
            let output = match &operation.input {
                Input::Read if versions => Output::ReadVersionedOk { value: *value, version: *version },
                Input::Read => Output::ReadOk(*value),
                Input::Write(new) => {
                    (*value, *version) = (Some(*new), *version + 1);
                    Output::WriteOk
                }
                Input::Cas { expected, new } => {
                    let holds = match expected {
                        Expected::Value(expected) => expected == value,
                        Expected::Version(expected) => expected == version,
                    };
                    if holds {
                        (*value, *version) = (Some(*new), *version + 1);
                    }
                    if holds { Output::CasOk } else { Output::CasFailed }
                }
            };
            if operation.ret.is_some() {
                operation.output = output;
            }
        }
    }

    /// Makes one answered read return a value nobody wrote; false if there is none.
    fn corrupt_a_read(rng: &mut fastrand::Rng, history: &mut [Operation]) -> bool {
        let reads: Vec<usize> = (0..history.len())
            .filter(|index| matches!(history[*index].output, Output::ReadOk(_) | Output::ReadVersionedOk { .. }))
            .collect();
        let Some(&index) = reads.get(rng.usize(0..reads.len().max(1))) else { return false };
        match &mut history[index].output {
            Output::ReadOk(value) | Output::ReadVersionedOk { value, .. } => *value = Some(NEVER_WRITTEN),
            _ => return false,
        }
        true
    }

    #[test]
    fn generated_linearizable_histories_pass_and_corrupted_reads_fail() {
        for versions in [false, true] {
            for seed in 0..150 {
                let mut rng = fastrand::Rng::with_seed(seed);
                let shape = Shape {
                    clients: rng.usize(2..7),
                    operations_per_client: rng.usize(5..40),
                    keys: rng.usize(1..3),
                    versions,
                    unanswered_percent: rng.u8(0..20),
                };
                let mut history = generate(&mut rng, &shape);
                let outcome = check_default(&history);
                assert!(outcome.is_ok(), "seed {seed}, versions {versions}: {outcome}");
                if corrupt_a_read(&mut rng, &mut history) {
                    let outcome = check_default(&history);
                    assert!(outcome.violation().is_some(), "seed {seed}, versions {versions}: {outcome}");
                }
            }
        }
    }

    /// Linearizability by exhaustive search over every order of every subset of the
    /// indeterminate operations: slow, obviously right, and blind to the pruning above.
    fn brute_force_linearizable(history: &[Operation]) -> bool {
        let operations: Vec<&Operation> = history
            .iter()
            .filter(|operation| {
                !matches!(operation.output, Output::Failed)
                    && !matches!((&operation.input, &operation.output), (Input::Read, Output::Unknown))
            })
            .collect();
        let pending = (1u32 << operations.len()) - 1;
        brute_force_from(&operations, pending, (None, 0))
    }

    fn brute_force_from(operations: &[&Operation], pending: u32, state: (Option<u64>, u64)) -> bool {
        let completed_pending = |index: usize| pending & (1 << index) != 0 && operations[index].ret.is_some();
        if !(0..operations.len()).any(completed_pending) {
            return true;
        }
        (0..operations.len()).filter(|index| pending & (1 << index) != 0).any(|index| {
            let operation = operations[index];
            // Nothing still pending may have returned before this was invoked.
            let respects_real_time = (0..operations.len())
                .filter(|other| completed_pending(*other))
                .all(|other| operations[other].ret.is_some_and(|ret| ret >= operation.call));
            respects_real_time
                && brute_force_step(operation, state)
                    .is_some_and(|next| brute_force_from(operations, pending & !(1 << index), next))
        })
    }

    fn brute_force_step(operation: &Operation, (value, version): (Option<u64>, u64)) -> Option<(Option<u64>, u64)> {
        let holds = |expected: &Expected| match expected {
            Expected::Value(expected) => *expected == value,
            Expected::Version(expected) => *expected == version,
        };
        match (&operation.input, &operation.output) {
            (Input::Read, Output::ReadOk(read)) => (*read == value).then_some((value, version)),
            (Input::Read, Output::ReadVersionedOk { value: read, version: read_version }) => {
                (*read == value && *read_version == version).then_some((value, version))
            }
            (Input::Write(new), _) => Some((Some(*new), version + 1)),
            (Input::Cas { expected, .. }, Output::CasFailed) => (!holds(expected)).then_some((value, version)),
            (Input::Cas { expected, new }, _) => holds(expected).then_some((Some(*new), version + 1)),
            _ => None,
        }
    }

    /// A small history of random operations with random results (mostly not linearizable),
    /// over few values so that values repeat, with touching and nested intervals.
    fn random_small_history(rng: &mut fastrand::Rng, versions: bool) -> Vec<Operation> {
        let value = |rng: &mut fastrand::Rng| rng.u64(1..4);
        let maybe_value = |rng: &mut fastrand::Rng| rng.bool().then(|| rng.u64(1..4));
        (0..rng.usize(1..9))
            .map(|client| {
                let call = rng.u64(0..12);
                let ret = (rng.u8(0..100) >= 30).then(|| call + rng.u64(0..6));
                let (input, output) = match rng.u8(0..3) {
                    0 if versions && rng.bool() => {
                        (Input::Read, Output::ReadVersionedOk { value: maybe_value(rng), version: rng.u64(0..4) })
                    }
                    0 => (Input::Read, Output::ReadOk(maybe_value(rng))),
                    1 => (Input::Write(value(rng)), Output::WriteOk),
                    _ => {
                        let expected = if versions && rng.bool() {
                            Expected::Version(rng.u64(0..4))
                        } else {
                            Expected::Value(maybe_value(rng))
                        };
                        let output = if rng.bool() { Output::CasOk } else { Output::CasFailed };
                        (Input::Cas { expected, new: value(rng) }, output)
                    }
                };
                let output = if ret.is_none() { Output::Unknown } else { output };
                operation(client, call, ret, input, output)
            })
            .collect()
    }

    #[test]
    fn small_random_histories_agree_with_brute_force() {
        let mut verdicts = [0; 2];
        for versions in [false, true] {
            for seed in 0..6000 {
                let mut rng = fastrand::Rng::with_seed(seed);
                let history = random_small_history(&mut rng, versions);
                let expected = brute_force_linearizable(&history);
                let outcome = check_default(&history);
                assert!(
                    matches!(outcome, Outcome::Ok | Outcome::Violation(_)),
                    "seed {seed}: small histories are always decided: {outcome}"
                );
                assert_eq!(outcome.is_ok(), expected, "seed {seed}, versions {versions}: {history:#?}\n{outcome}");
                verdicts[usize::from(expected)] += 1;
            }
        }
        // Both verdicts are well represented, or the comparison would prove little.
        assert!(verdicts.iter().all(|count| *count > 1000), "violations, linearizable: {verdicts:?}");
    }

    #[test]
    fn large_histories_check_quickly() {
        for versions in [false, true] {
            let mut rng = fastrand::Rng::with_seed(20);
            let shape = Shape { clients: 8, operations_per_client: 500, keys: 1, versions, unanswered_percent: 3 };
            let mut history = generate(&mut rng, &shape);
            let started = Instant::now();
            let outcome = check_default(&history);
            let checked_in = started.elapsed();
            assert!(outcome.is_ok(), "{outcome}");
            assert!(corrupt_a_read(&mut rng, &mut history));
            let started = Instant::now();
            let corrupted = check_default(&history);
            let refuted_in = started.elapsed();
            assert!(corrupted.violation().is_some(), "{corrupted}");
            // Far above the ~1 s a debug build takes: only an exponential regression trips it.
            assert!(checked_in + refuted_in < Duration::from_secs(60), "{checked_in:?} + {refuted_in:?}");
            eprintln!(
                "{} operations (versions: {versions}): linearizable in {checked_in:?}, corrupted refuted in {refuted_in:?}",
                history.len()
            );
        }
    }

    #[test]
    fn many_unanswered_writes_do_not_blow_up_the_search() {
        // 200 timeouts pending through a stale read: a naive search tries 2^200 subsets.
        let mut history = vec![write(0, 0, 1, 1)];
        history.extend((0..200).map(|n| write_unanswered(1 + n as usize, 2 + n, 1000 + n)));
        history.extend([write(0, 300, 301, 2), read(0, 302, 303, Some(1))]);
        let budget = Budget::steps(1_000_000);
        let outcome = check(&history, &budget).expect("well formed");
        assert!(outcome.violation().is_some(), "{outcome}");

        // The same, with each timed-out write's value read back once (so each one matters).
        let mut history = vec![write(0, 0, 1, 1)];
        history.extend((0..60).map(|n| write_unanswered(1 + n as usize, 2 + n, 1000 + n)));
        history.extend((0..60).map(|n| read(0, 100 + 2 * n, 101 + 2 * n, Some(1000 + n))));
        assert!(check(&history, &budget).expect("well formed").is_ok());
        history.extend([write(0, 300, 301, 2), read(0, 302, 303, Some(1))]);
        let outcome = check(&history, &budget).expect("well formed");
        assert!(outcome.violation().is_some(), "{outcome}");
    }

    #[test]
    fn the_budget_gives_up_on_a_pathological_history() {
        // 40 overlapping writes, then two reads no order explains: proving it means trying
        // every subset of the writes.
        let mut history: Vec<Operation> = (0..40).map(|n| write(n as usize, n, 1000, n + 1)).collect();
        history.extend([read(0, 2000, 2001, Some(1)), read(0, 2002, 2003, Some(2))]);
        let started = Instant::now();
        let outcome = check(&history, &Budget::steps(200_000)).expect("well formed");
        assert_eq!(outcome, Outcome::Unknown { undecided_keys: vec![KEY.to_owned()] });
        let by_deadline = check(&history, &Budget::steps(u64::MAX).within(Duration::from_millis(200)));
        assert!(matches!(by_deadline, Ok(Outcome::Unknown { .. })));
        assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    }
}
