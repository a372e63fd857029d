//! References between documents: grants and quota scopes name contracts and their
//! operations or tools, consumer subjects name consumers. The loader reports what does not
//! resolve; the compiler resolves the rest.

use std::collections::HashMap;

use crate::policy::{
    ApiContract, Consumer, Document, Kind, Namespace, ObjectRef, Operation, OperationId, Protocol,
    Tool, UnlistedTools,
};

/// Why a reference does not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("unknown ApiContract {namespace}/{name}")]
    UnknownContract { namespace: String, name: String },
    #[error(
        "ApiContract {namespace}/{name} has protocol {protocol}: only http and mcp contracts \
         have access rules and quotas"
    )]
    NotGoverned {
        namespace: String,
        name: String,
        protocol: Protocol,
    },
    /// Operations named for an mcp contract, or tools for an http one.
    #[error(
        "ApiContract {namespace}/{name} has protocol {protocol}: {what} are only for \
         {expected} contracts"
    )]
    WrongProtocol {
        namespace: String,
        name: String,
        protocol: Protocol,
        /// `operations` or `tools`.
        what: &'static str,
        expected: Protocol,
    },
    #[error("ApiContract {namespace}/{name} has no operation {operation:?} ({known})")]
    UnknownOperation {
        namespace: String,
        name: String,
        operation: String,
        /// The operations it has, to spot a typo.
        known: String,
    },
    #[error(
        "ApiContract {namespace}/{name} has no tool {tool:?} ({known}); unlisted tools are denied"
    )]
    UnknownTool {
        namespace: String,
        name: String,
        tool: String,
        /// The tools it lists, to spot a typo.
        known: String,
    },
    #[error("unknown Consumer {namespace}/{name}")]
    UnknownConsumer { namespace: String, name: String },
}

impl RefError {
    /// The kind and name of the document referred to.
    pub fn target(&self) -> (Kind, &str) {
        match self {
            RefError::UnknownContract { name, .. }
            | RefError::NotGoverned { name, .. }
            | RefError::WrongProtocol { name, .. }
            | RefError::UnknownOperation { name, .. }
            | RefError::UnknownTool { name, .. } => (Kind::ApiContract, name),
            RefError::UnknownConsumer { name, .. } => (Kind::Consumer, name),
        }
    }
}

/// The documents that can be referred to, by (namespace, name).
#[derive(Debug, Default)]
pub struct Catalog<'a> {
    contracts: HashMap<(&'a str, &'a str), &'a ApiContract>,
    consumers: HashMap<(&'a str, &'a str), &'a Consumer>,
}

impl<'a> Catalog<'a> {
    /// Indexes `documents`; the first of two with the same key wins (the loader
    /// reports the second).
    pub fn new(documents: impl IntoIterator<Item = &'a Document>) -> Self {
        let mut catalog = Self::default();
        for doc in documents {
            match doc {
                Document::ApiContract(c) => {
                    let key = (c.metadata.namespace.as_str(), c.metadata.name.as_str());
                    catalog.contracts.entry(key).or_insert(c);
                }
                Document::Consumer(c) => {
                    let key = (c.metadata.namespace.as_str(), c.metadata.name.as_str());
                    catalog.consumers.entry(key).or_insert(c);
                }
                _ => {}
            }
        }
        catalog
    }

    /// The http or mcp contract `reference` names, from an object in namespace `own`.
    pub fn governed_contract(
        &self,
        own: &Namespace,
        reference: &ObjectRef,
    ) -> Result<&'a ApiContract, RefError> {
        let namespace = reference.namespace_or(own);
        let contract = self
            .contracts
            .get(&(namespace.as_str(), reference.name.as_str()))
            .ok_or_else(|| RefError::UnknownContract {
                namespace: namespace.to_string(),
                name: reference.name.to_string(),
            })?;
        if !contract.spec.protocol.is_governed() {
            return Err(RefError::NotGoverned {
                namespace: namespace.to_string(),
                name: reference.name.to_string(),
                protocol: contract.spec.protocol,
            });
        }
        Ok(contract)
    }

    /// Checks that `contract` has protocol `expected`, since it is given `what`
    /// (`operations` or `tools`).
    pub fn expect_protocol(
        contract: &ApiContract,
        expected: Protocol,
        what: &'static str,
    ) -> Result<(), RefError> {
        if contract.spec.protocol == expected {
            return Ok(());
        }
        Err(RefError::WrongProtocol {
            namespace: contract.metadata.namespace.to_string(),
            name: contract.metadata.name.to_string(),
            protocol: contract.spec.protocol,
            what,
            expected,
        })
    }

    /// The operation `id` of `contract`.
    pub fn operation(
        contract: &'a ApiContract,
        id: &OperationId,
    ) -> Result<&'a Operation, RefError> {
        contract.spec.operation(id).ok_or_else(|| {
            let ids: Vec<&str> = contract
                .spec
                .operations()
                .iter()
                .map(|o| o.id.as_str())
                .collect();
            RefError::UnknownOperation {
                namespace: contract.metadata.namespace.to_string(),
                name: contract.metadata.name.to_string(),
                operation: id.to_string(),
                known: if ids.is_empty() {
                    "it declares no operations".to_owned()
                } else {
                    format!("it has {}", ids.join(", "))
                },
            }
        })
    }

    /// The tool `name` of mcp `contract`: `Some` if listed, `None` if not listed but
    /// the contract allows unlisted tools, an error if it denies them.
    pub fn tool(contract: &'a ApiContract, name: &str) -> Result<Option<&'a Tool>, RefError> {
        if let Some(tool) = contract.spec.tool(name) {
            return Ok(Some(tool));
        }
        if contract.spec.unlisted_tools() == UnlistedTools::Allow {
            return Ok(None);
        }
        let names: Vec<&str> = contract
            .spec
            .tools()
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        Err(RefError::UnknownTool {
            namespace: contract.metadata.namespace.to_string(),
            name: contract.metadata.name.to_string(),
            tool: name.to_owned(),
            known: if names.is_empty() {
                "it lists no tools".to_owned()
            } else {
                format!("it has {}", names.join(", "))
            },
        })
    }

    /// The consumer `reference` names, from an object in namespace `own`.
    pub fn consumer(
        &self,
        own: &Namespace,
        reference: &ObjectRef,
    ) -> Result<&'a Consumer, RefError> {
        let namespace = reference.namespace_or(own);
        self.consumers
            .get(&(namespace.as_str(), reference.name.as_str()))
            .copied()
            .ok_or_else(|| RefError::UnknownConsumer {
                namespace: namespace.to_string(),
                name: reference.name.to_string(),
            })
    }
}
