//! Every `[general]` key with its value spelled as in `router.toml`: what
//! the admin console's SHOW CONFIG lists and a reload's message quotes.

use crate::model::{General, Sharding};

/// A setting's value as the files spell it (lists joined with commas).
trait Spelled {
    fn spelled(&self) -> String;
}

macro_rules! spelled_by_to_string {
    ($($t:ty),+) => {
        $(impl Spelled for $t {
            fn spelled(&self) -> String {
                self.to_string()
            }
        })+
    };
}

spelled_by_to_string!(
    String,
    bool,
    u32,
    u64,
    usize,
    crate::PoolMode,
    crate::SessionStateMode,
    crate::ReadWriteSplit,
    crate::LoadBalancing,
    crate::ClientTls,
    crate::ServerTls,
    crate::LogFormat,
    crate::CrossShard
);

impl Spelled for Vec<String> {
    fn spelled(&self) -> String {
        self.join(",")
    }
}

/// `[general]` keys and values, the sharding keys (kept in [`Sharding`])
/// last. Destructuring makes a key added to either struct without being
/// listed here a compile error, so SHOW CONFIG cannot leave one out.
pub fn general_values(g: &General, s: &Sharding) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(48);
    macro_rules! list {
        ($v:ident: $ty:ident { $($field:ident),+ $(,)? }) => {
            let $ty { $($field: _),+ } = $v;
            $(out.push((stringify!($field), $v.$field.spelled()));)+
        };
    }
    macro_rules! list_general {
        ($($field:ident),+ $(,)?) => {
            list!(g: General { $($field),+ });
        };
    }
    crate::general_fields::with_general_fields!(list_general);
    list!(s: Sharding {
        cross_shard,
        two_phase_commit,
        coordinator_database,
        instance_id,
    });
    out
}

/// The keys of `[jwt]`, `[auth_query]` and `[jit]`, for the sections
/// present, as `section.key` (e.g. `jwt.leeway_s`), so SHOW CONFIG shows
/// what login checks are in force after a reload. Destructured as
/// [`general_values`] is: a new key cannot be left out.
pub fn login_section_values(c: &crate::Config) -> Vec<(String, String)> {
    use crate::{AuthQuery, Jit, Jwt};
    let mut out = Vec::new();
    macro_rules! list {
        ($prefix:literal, $v:ident: $ty:ident { $($field:ident),+ $(,)? } $(, ignore $($skip:ident),+)?) => {
            let $ty { $($field: _,)+ $($($skip: _,)+)? } = $v;
            $(out.push((concat!($prefix, ".", stringify!($field)).to_string(), $v.$field.spelled()));)+
        };
    }
    if let Some(j) = &c.jwt {
        list!("jwt", j: Jwt {
            public_key_file,
            jwks_url,
            jwks_cache_ttl_s,
            jwks_min_refresh_interval_s,
            algorithms,
            issuer,
            audience,
            leeway_s,
            username_claim,
            role_claim,
            read_only_claim,
            connect_as,
            allowed_roles,
            databases,
            auto_provision,
            auto_provision_read_only,
            allow_insecure_transport,
            disconnect_on_expiry,
        }, ignore lines);
    }
    if let Some(a) = &c.auth_query {
        list!("auth_query", a: AuthQuery { user, query, cache_ttl_s });
    }
    if let Some(j) = &c.jit {
        list!("jit", j: Jit { api_url, timeout_ms, token_prefixes, api_ca, databases });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_once_with_its_spelling() {
        let rows = general_values(&General::default(), &Sharding::default());
        let keys: Vec<_> = rows.iter().map(|(k, _)| *k).collect();
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), keys.len());
        let get = |k: &str| rows.iter().find(|(key, _)| *key == k).unwrap().1.clone();
        assert_eq!(get("pool_mode"), "transaction");
        assert_eq!(get("session_state"), "pin");
        assert_eq!(get("cross_shard"), "allow");
        assert_eq!(get("two_phase_commit"), "true");
        assert_eq!(get("query_timeout_ms"), "0");
    }
}
