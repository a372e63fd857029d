//! Validated scalar field types.
//!
//! Each type checks its value inside a serde `Visitor`, not after deserializing: serde_yaml
//! attaches the line, column and field path of the scalar being visited to an error raised
//! there, so a bad value is reported where it is written (`spec.address` at 7:12) rather
//! than at the start of the enclosing mapping.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddrV4;
use std::num::NonZeroU64;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A string type whose values are checked by `validate`.
pub(crate) trait Validated: Sized {
    /// What the value must be, for serde's "invalid type" errors.
    const EXPECTING: &'static str;
    fn validate(value: &str) -> Result<Self, String>;
}

struct ValidatedVisitor<T>(PhantomData<T>);

impl<T: Validated> Visitor<'_> for ValidatedVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<T, E> {
        T::validate(value).map_err(E::custom)
    }
}

pub(crate) fn deserialize_validated<'de, D: Deserializer<'de>, T: Validated>(
    d: D,
) -> Result<T, D::Error> {
    d.deserialize_str(ValidatedVisitor(PhantomData))
}

/// Declares a validated string newtype with the usual accessors. With a fourth
/// argument, the value is normalized (e.g. upper-cased) before it is checked.
macro_rules! validated_string {
    ($(#[$meta:meta])* $name:ident, $expecting:literal, $check:path) => {
        $crate::policy::fields::validated_string!(
            $(#[$meta])* $name, $expecting, $check, ::std::convert::identity
        );
    };
    ($(#[$meta:meta])* $name:ident, $expecting:literal, $check:path, $normalize:path) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Checks `value` with the same rules as the YAML loader.
            pub fn new(value: impl Into<String>) -> Result<Self, String> {
                let value: String = $normalize(value.into());
                $check(&value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl $crate::policy::fields::Validated for $name {
            const EXPECTING: &'static str = $expecting;
            fn validate(value: &str) -> Result<Self, String> {
                Self::new(value)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::policy::fields::deserialize_validated(d)
            }
        }

        impl ::std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
    };
}
pub(crate) use validated_string;

validated_string!(
    /// An object name: a DNS-1123 subdomain, as in Kubernetes (`orders-api`).
    Name,
    "an object name (lowercase DNS subdomain)",
    check_dns_subdomain
);

validated_string!(
    /// A namespace: a DNS-1123 label (`shop`). Defaults to `default`.
    Namespace,
    "a namespace (lowercase DNS label)",
    check_dns_label
);

validated_string!(
    /// A service account name (a DNS-1123 subdomain). Defaults to `default`.
    ServiceAccountName,
    "a service account name (lowercase DNS subdomain)",
    check_dns_subdomain
);

validated_string!(
    /// A cgroup v2 path relative to the unified hierarchy's root
    /// (`system.slice/orders.service`): no leading `/`, no `.` or `..` components.
    CgroupPath,
    "a cgroup path relative to the cgroup v2 root",
    check_cgroup_path
);

validated_string!(
    /// A label key: `[prefix/]name`, Kubernetes syntax.
    LabelKey,
    "a label key",
    check_label_key
);

validated_string!(
    /// A label value: empty or up to 63 alphanumerics, `-`, `_`, `.`, Kubernetes syntax.
    LabelValue,
    "a label value",
    check_label_value
);

validated_string!(
    /// A plan name (`gold`): up to 63 letters, digits, `-`, `_`, `.`.
    PlanName,
    "a plan name",
    check_plan_name
);

validated_string!(
    /// Free text from another system (a JWT issuer, audience, group or claim): not
    /// empty, at most 1024 bytes, no control characters.
    Text,
    "a non-empty string",
    check_text
);

impl Default for Namespace {
    fn default() -> Self {
        Self("default".to_owned())
    }
}

impl Default for ServiceAccountName {
    fn default() -> Self {
        Self("default".to_owned())
    }
}

/// A label set. Sorted by key, so that iteration order is canonical (identity hashing
/// depends on it). A key written twice is an error, not "last one wins".
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(pub BTreeMap<LabelKey, LabelValue>);

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_unique_map(d, "a mapping of label keys to values", "label key").map(Labels)
    }
}

/// A mapping in which a key written twice is an error naming the key (`what` says what
/// a key is, e.g. "label key"), not "last one wins".
pub(crate) fn deserialize_unique_map<'de, D, K, V>(
    d: D,
    expecting: &'static str,
    what: &'static str,
) -> Result<BTreeMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord + fmt::Display,
    V: Deserialize<'de>,
{
    struct MapVisitor<K, V> {
        expecting: &'static str,
        what: &'static str,
        marker: PhantomData<(K, V)>,
    }
    impl<'de, K, V> Visitor<'de> for MapVisitor<K, V>
    where
        K: Deserialize<'de> + Ord + fmt::Display,
        V: Deserialize<'de>,
    {
        type Value = BTreeMap<K, V>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut entries = BTreeMap::new();
            while let Some((key, value)) = map.next_entry::<K, V>()? {
                match entries.entry(key) {
                    Entry::Vacant(slot) => {
                        slot.insert(value);
                    }
                    Entry::Occupied(slot) => {
                        let msg = format!("duplicate {} \"{}\"", self.what, slot.key());
                        return Err(de::Error::custom(msg));
                    }
                }
            }
            Ok(entries)
        }
    }
    d.deserialize_map(MapVisitor {
        expecting,
        what,
        marker: PhantomData,
    })
}

impl Labels {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// An upstream address: IPv4 and a non-zero port (`10.96.0.10:80`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(pub SocketAddrV4);

impl Address {
    pub fn new(value: &str) -> Result<Self, String> {
        let addr = SocketAddrV4::from_str(value).map_err(|_| {
            format!("invalid IPv4 socket address {value:?} (expected IP:port, e.g. 10.96.0.10:80)")
        })?;
        if addr.port() == 0 {
            return Err(format!(
                "invalid IPv4 socket address {value:?}: port must not be 0"
            ));
        }
        if addr.ip().is_unspecified() || addr.ip().is_broadcast() || addr.ip().is_multicast() {
            return Err(format!(
                "invalid IPv4 socket address {value:?}: {} is not a unicast destination",
                addr.ip()
            ));
        }
        Ok(Self(addr))
    }
}

impl Validated for Address {
    const EXPECTING: &'static str = "an IPv4 socket address (IP:port)";
    fn validate(value: &str) -> Result<Self, String> {
        Self::new(value)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_validated(d)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A reference to another object by name: `NAME` (in the referring object's
/// namespace) or `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub namespace: Option<Namespace>,
    pub name: Name,
}

impl ObjectRef {
    pub fn new(value: &str) -> Result<Self, String> {
        let (namespace, name) = match value.split_once('/') {
            Some((namespace, name)) => (Some(namespace), name),
            None => (None, value),
        };
        let namespace = namespace
            .map(Namespace::new)
            .transpose()
            .map_err(|e| format!("invalid reference {value:?}: namespace {e}"))?;
        let name = Name::new(name).map_err(|e| format!("invalid reference {value:?}: name {e}"))?;
        Ok(Self { namespace, name })
    }

    /// The namespace referred to, given the referring object's.
    pub fn namespace_or<'a>(&'a self, own: &'a Namespace) -> &'a Namespace {
        self.namespace.as_ref().unwrap_or(own)
    }
}

impl Validated for ObjectRef {
    const EXPECTING: &'static str = "an object name or namespace/name";
    fn validate(value: &str) -> Result<Self, String> {
        Self::new(value)
    }
}

impl<'de> Deserialize<'de> for ObjectRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_validated(d)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{namespace}/{}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

/// An integer greater than 0 (a limit, a size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PositiveU64(NonZeroU64);

impl PositiveU64 {
    pub fn new(value: u64) -> Option<Self> {
        NonZeroU64::new(value).map(Self)
    }

    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl<'de> Deserialize<'de> for PositiveU64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Checked inside the visitor so that the error carries the value's position.
        struct PositiveVisitor;
        impl Visitor<'_> for PositiveVisitor {
            type Value = PositiveU64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer greater than 0")
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<PositiveU64, E> {
                PositiveU64::new(value)
                    .ok_or_else(|| E::custom("must be an integer greater than 0, not 0"))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<PositiveU64, E> {
                match u64::try_from(value) {
                    Ok(value) => self.visit_u64(value),
                    Err(_) => Err(E::custom(format!(
                        "must be an integer greater than 0, not {value}"
                    ))),
                }
            }
        }
        d.deserialize_u64(PositiveVisitor)
    }
}

impl fmt::Display for PositiveU64 {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.fmt(f)
    }
}

// --- checks -------------------------------------------------------------------------

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn check_dns_label(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 63 {
        return Err(format!("{value:?} must be 1 to 63 characters long"));
    }
    let ok = value.chars().all(|c| is_lower_alnum(c) || c == '-')
        && value.starts_with(is_lower_alnum)
        && value.ends_with(is_lower_alnum);
    if !ok {
        return Err(format!(
            "{value:?} is not a valid DNS label (lowercase letters, digits and '-', \
             starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

fn check_dns_subdomain(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 253 {
        return Err(format!("{value:?} must be 1 to 253 characters long"));
    }
    if value.split('.').any(|part| check_dns_label(part).is_err()) {
        return Err(format!(
            "{value:?} is not a valid DNS subdomain (dot-separated lowercase labels of \
             letters, digits and '-')"
        ));
    }
    Ok(())
}

fn check_cgroup_path(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("cgroup path must not be empty".to_owned());
    }
    if value.starts_with('/') {
        return Err(format!(
            "cgroup path {value:?} must be relative to the cgroup v2 root (no leading '/')"
        ));
    }
    if value.len() > 4096 || value.contains('\0') {
        return Err(format!("cgroup path {value:?} is too long or contains NUL"));
    }
    for component in value.split('/') {
        match component {
            ".." => return Err(format!("cgroup path {value:?} must not contain '..'")),
            "." => {
                return Err(format!(
                    "cgroup path {value:?} must not contain '.' components"
                ))
            }
            "" => return Err(format!("cgroup path {value:?} has an empty component")),
            _ => {}
        }
    }
    Ok(())
}

/// Kubernetes "qualified name" part: 1-63 alphanumerics, '-', '_', '.', alnum at both ends.
fn is_qualified_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn check_label_key(value: &str) -> Result<(), String> {
    let (prefix, name) = match value.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, value),
    };
    let prefix_ok = prefix.is_none_or(|p| check_dns_subdomain(p).is_ok());
    if !prefix_ok || !is_qualified_name(name) {
        return Err(format!(
            "invalid label key {value:?} (expected [prefix/]name, name of up to 63 \
             letters, digits, '-', '_', '.')"
        ));
    }
    Ok(())
}

fn check_label_value(value: &str) -> Result<(), String> {
    if !value.is_empty() && !is_qualified_name(value) {
        return Err(format!(
            "invalid label value {value:?} (up to 63 letters, digits, '-', '_', '.', \
             starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

fn check_plan_name(value: &str) -> Result<(), String> {
    if !is_qualified_name(value) {
        return Err(format!(
            "invalid plan name {value:?} (up to 63 letters, digits, '-', '_', '.', \
             starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

fn check_text(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if value.len() > 1024 {
        return Err(format!("must be at most 1024 bytes, not {}", value.len()));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{value:?} contains a control character"));
    }
    Ok(())
}

/// An identifier of something inside an object (an operation id, an API key id):
/// 1 to 63 letters, digits, `-`, `_`, `.`, starting with a letter and ending with a
/// letter or digit, so both `list-orders` and `listOrders` work.
pub(crate) fn check_identifier(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.starts_with(|c: char| c.is_ascii_alphabetic())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(format!(
            "{value:?} is not a valid identifier (1 to 63 letters, digits, '-', '_', '.', \
             starting with a letter and ending with a letter or digit)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(Name::new("orders-api").is_ok());
        assert!(Name::new("orders.api").is_ok());
        assert!(Name::new("Orders").is_err());
        assert!(Name::new("-x").is_err());
        assert!(Name::new("").is_err());
        assert!(Namespace::new("shop").is_ok());
        assert!(Namespace::new("shop.eu").is_err());
    }

    #[test]
    fn cgroup_paths() {
        assert!(CgroupPath::new("stoa.slice/billing-agent").is_ok());
        assert!(CgroupPath::new("system.slice/orders.service").is_ok());
        assert!(CgroupPath::new("/stoa.slice/x").is_err());
        assert!(CgroupPath::new("stoa.slice/../x").is_err());
        assert!(CgroupPath::new("..").is_err());
        assert!(CgroupPath::new("a//b").is_err());
        assert!(CgroupPath::new("a/").is_err());
        assert!(CgroupPath::new("./a").is_err());
        assert!(CgroupPath::new("").is_err());
    }

    #[test]
    fn addresses() {
        assert_eq!(
            Address::new("10.96.0.10:80").unwrap().to_string(),
            "10.96.0.10:80"
        );
        for bad in [
            "10.96.0.10",
            "10.96.0.10:0",
            "0.0.0.0:80",
            "[::1]:80",
            "host:80",
        ] {
            assert!(Address::new(bad).is_err(), "{bad} accepted");
        }
        assert!(Address::new("10.96.0.10")
            .unwrap_err()
            .starts_with("invalid IPv4 socket address \"10.96.0.10\""));
    }

    #[test]
    fn object_refs() {
        let local = ObjectRef::new("orders-api").unwrap();
        assert_eq!(local.namespace, None);
        assert_eq!(local.to_string(), "orders-api");
        let own = Namespace::new("shop").unwrap();
        assert_eq!(local.namespace_or(&own).as_str(), "shop");
        let qualified = ObjectRef::new("other/orders-api").unwrap();
        assert_eq!(qualified.namespace_or(&own).as_str(), "other");
        assert_eq!(qualified.to_string(), "other/orders-api");
        for bad in ["", "/x", "x/", "a/b/c", "Orders", "sh.op/x"] {
            assert!(ObjectRef::new(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn identifiers_and_text() {
        for ok in ["listOrders", "list-orders", "get_order.v2", "a"] {
            assert!(check_identifier(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1st", "-x", "x-", "list orders", "a/b", &"a".repeat(64)] {
            assert!(check_identifier(bad).is_err(), "{bad} accepted");
        }
        assert!(Text::new("https://sso.example/realms/shop").is_ok());
        assert!(Text::new("").is_err());
        assert!(Text::new("a\nb").is_err());
        assert!(PlanName::new("gold").is_ok());
        assert!(PlanName::new("gold plan").is_err());
    }

    #[test]
    fn positive_integers() {
        let parse = |yaml: &str| serde_yaml::from_str::<PositiveU64>(yaml).map(PositiveU64::get);
        assert_eq!(parse("5").unwrap(), 5);
        for bad in ["0", "-3", "1.5", "\"5\"", "~"] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
        assert!(parse("0")
            .unwrap_err()
            .to_string()
            .contains("greater than 0"));
    }

    #[test]
    fn labels() {
        assert!(LabelKey::new("app").is_ok());
        assert!(LabelKey::new("app.kubernetes.io/name").is_ok());
        assert!(LabelKey::new("Bad Key").is_err());
        assert!(LabelKey::new("/x").is_err());
        assert!(LabelValue::new("").is_ok());
        assert!(LabelValue::new("v1.2_3").is_ok());
        assert!(LabelValue::new("-v").is_err());
    }
}
