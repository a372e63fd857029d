//! `ApiContract`: a governed upstream.

use serde::Deserialize;

use super::fields::Address;
use super::{Kind, Object, Spec};

/// `kind: ApiContract`.
pub type ApiContract = Object<ApiContractSpec>;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiContractSpec {
    pub protocol: Protocol,
    /// The address clients connect to, `IPv4:port`.
    pub address: Address,
}

impl Spec for ApiContractSpec {
    const KIND: Kind = Kind::ApiContract;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Tcp,
}
