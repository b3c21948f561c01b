//! The Lua scripts (in `lua/`) and how they run.
//!
//! Every script shares the helpers of `lua/prelude.lua`. On a server with
//! Redis functions (Redis 7) they run as one function library,
//! [`LIBRARY`], loaded once per server: each call is an `FCALL` that runs
//! only its own body, not the prelude. The library's name (and every
//! function's) carries a hash of its code, so clients of different quorate
//! versions sharing a server each find their own. A server that does not
//! know the library (never loaded, restarted without persistence, a
//! promoted replica that missed it, `FUNCTION FLUSH`) answers `Function
//! not found`: the library is loaded (`FUNCTION LOAD REPLACE`) and the call
//! made again, as `EVALSHA` falls back to `EVAL`.
//!
//! A server without functions (before Redis 7: `unknown command`) or a
//! user the ACL denies `FCALL` or `FUNCTION` gets the scripts as before:
//! the prelude and the body as one script, `EVALSHA` falling back to
//! `EVAL` ([`Script::eval_script`]); the coordinator then stays with
//! scripts.

use std::sync::{LazyLock, OnceLock};

const PRELUDE: &str = include_str!("lua/prelude.lua");

/// One entry point: a file of `lua/`, run as a function of [`LIBRARY`] or
/// as a script prefixed with the prelude.
pub(crate) struct Script {
    /// The file's name without `.lua`, and the function's after the
    /// library's prefix.
    name: &'static str,
    body: &'static str,
    /// Registered with the `allow-oom` flag: runs while the server is out
    /// of memory (a function without it is refused then). Given to what
    /// releases, reads or keeps alive, never to what grants or writes
    /// data, so a full server still lets holders go and sessions live.
    allow_oom: bool,
    eval: OnceLock<redis::Script>,
}

impl Script {
    const fn new(name: &'static str, body: &'static str, allow_oom: bool) -> Script {
        Script {
            name,
            body,
            allow_oom,
            eval: OnceLock::new(),
        }
    }

    /// The script for `EVALSHA`/`EVAL`: the prelude, `NS` from `ARGV[1]`,
    /// the body.
    pub(crate) fn eval_script(&self) -> &redis::Script {
        self.eval
            .get_or_init(|| redis::Script::new(&format!("{PRELUDE}NS = ARGV[1]\n{}", self.body)))
    }

    /// The name of the function in [`LIBRARY`].
    pub(crate) fn function(&self) -> String {
        format!("{}_{}", LIBRARY.name, self.name)
    }
}

macro_rules! scripts {
    ($($name:ident, $file:literal, $allow_oom:expr;)*) => {
        $(
            #[doc = concat!("`lua/", $file, ".lua`.")]
            pub(crate) static $name: Script =
                Script::new($file, include_str!(concat!("lua/", $file, ".lua")), $allow_oom);
        )*
        /// Every entry point, in the library's order.
        static ALL: &[&Script] = &[$(&$name),*];
    };
}

scripts! {
    EX_ACQUIRE, "ex_acquire", false;
    EX_RELEASE, "ex_release", true;
    EX_IS_HELD, "ex_is_held", true;
    RW_ACQUIRE, "rw_acquire", false;
    RW_RELEASE, "rw_release", true;
    RW_IS_HELD, "rw_is_held", true;
    GUARDED_WRITE, "guarded_write", false;
    KEEP_ALIVE, "keep_alive", true;
    REVOKE, "revoke", true;
    SESSION_OPEN, "session_open", false;
    GROUP_JOIN, "group_join", false;
    GROUP_UPDATE, "group_update", false;
    GROUP_LEAVE, "group_leave", true;
    GROUP_LIST, "group_list", true;
    LEADER, "leader", true;
    PROCLAIM, "proclaim", false;
    LOCKS, "locks", true;
}

/// The function library: its name and its code for `FUNCTION LOAD`.
pub(crate) struct Library {
    /// `quorate_<12 hex digits of the SHA-1 of the code>`.
    pub(crate) name: String,
    /// `#!lua name=…`, the prelude, one `redis.register_function` per
    /// entry point.
    pub(crate) code: String,
}

/// The library of every entry point (built once per process).
pub(crate) static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
    let mut identity = String::from(PRELUDE);
    for s in ALL {
        identity.push_str(&format!("\n-- {} {}\n{}", s.name, s.allow_oom, s.body));
    }
    let hash = redis::Script::new(&identity).get_hash().to_owned();
    let name = format!("quorate_{}", &hash[..12]);
    let mut code = format!("#!lua name={name}\n{PRELUDE}\n");
    for s in ALL {
        let flags = if s.allow_oom { "{ 'allow-oom' }" } else { "{}" };
        code.push_str(&format!(
            "redis.register_function{{ function_name = '{name}_{}', flags = {flags}, \
             callback = function(_, ARGV)\nNS = ARGV[1]\n{}\nend }}\n",
            s.name, s.body
        ));
    }
    Library { name, code }
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_names_every_function_after_its_hash() {
        let lib = &*LIBRARY;
        assert!(lib.name.starts_with("quorate_") && lib.name.len() == 20);
        assert!(lib.code.starts_with(&format!("#!lua name={}\n", lib.name)));
        for s in ALL {
            let f = s.function();
            assert!(lib.code.contains(&format!("'{f}'")), "{f}");
        }
        assert_eq!(EX_ACQUIRE.function(), format!("{}_ex_acquire", lib.name));
    }
}
