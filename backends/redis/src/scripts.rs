//! The Lua scripts (in `lua/`), each prefixed with the shared prelude.
//! `redis::Script` runs them with `EVALSHA` and falls back to `EVAL` when
//! the server does not know them (a restarted server, for instance).

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($name:ident, $file:literal) => {
        #[doc = concat!("`lua/", $file, "`.")]
        pub(crate) static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(
                include_str!("lua/prelude.lua"),
                "NS = ARGV[1]\n",
                include_str!(concat!("lua/", $file))
            ))
        });
    };
}

script!(EX_ACQUIRE, "ex_acquire.lua");
script!(EX_RELEASE, "ex_release.lua");
script!(EX_IS_HELD, "ex_is_held.lua");
script!(RW_ACQUIRE, "rw_acquire.lua");
script!(RW_RELEASE, "rw_release.lua");
script!(RW_IS_HELD, "rw_is_held.lua");
script!(GUARDED_WRITE, "guarded_write.lua");
script!(KEEP_ALIVE, "keep_alive.lua");
script!(REVOKE, "revoke.lua");
script!(SESSION_OPEN, "session_open.lua");
script!(GROUP_JOIN, "group_join.lua");
script!(GROUP_UPDATE, "group_update.lua");
script!(GROUP_LEAVE, "group_leave.lua");
script!(GROUP_LIST, "group_list.lua");
script!(LEADER, "leader.lua");
script!(PROCLAIM, "proclaim.lua");
