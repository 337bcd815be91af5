//! The scenarios of issue 5, one module each. Every scenario is a function
//! `run(target, ctx, params) -> Run` that sets up its users on the target (over gRPC),
//! measures, and checks that every acknowledged message arrived exactly once; `main` runs it
//! against the relay (the ceiling, where one applies) and then against chatd, and prints
//! both. The session scenarios (pairs, latency, idle, storm, fanout) take `--transport
//! grpc|ws`: their sessions are [`crate::session::Session`]s, the same code for either.
//!
//! - [`pairs`]: 1:1 pairs, closed loop (N sends in flight per sender): delivered msg/s.
//! - [`latency`]: 1:1 pairs, open loop at a fixed offered rate: latency from the intended
//!   send time.
//! - [`idle`]: N idle sessions: server memory per session.
//! - [`catchup`]: a device N messages behind syncs to current.
//! - [`storm`]: N sessions connecting at once.
//! - [`fanout`]: one message to a group of N online members: time to the last delivery.

pub mod catchup;
pub mod fanout;
pub mod idle;
pub mod latency;
pub mod pairs;
pub mod storm;

use crate::load::Clock;

/// What every scenario shares within one invocation.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    /// Makes usernames unique to this run (a `--server` may hold earlier runs' users).
    pub run: u32,
    /// The time base of the stamps in message texts.
    pub clock: Clock,
}

impl Ctx {
    /// The context of round `round` of `--rounds`: the same clock, usernames of its own
    /// (a `--server` keeps the users of the rounds before).
    pub fn for_round(self, round: u16) -> Ctx {
        Ctx {
            run: self.run.wrapping_add(u32::from(round)),
            ..self
        }
    }
}

/// Prints a progress line on stderr: `[scenario/target] ...`.
#[macro_export]
macro_rules! progress {
    ($scenario:expr, $target:expr, $($arg:tt)*) => {
        eprintln!("[{}/{}] {}", $scenario, $target.kind.name(), format_args!($($arg)*))
    };
}
