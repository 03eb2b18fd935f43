//! Waiting on conditions with a deadline: [`eventually`], the one way the tests wait (it
//! lives beside the runtimes' conformance suite, whose tests use it too).

pub use marina_runtime::conformance::eventually;
