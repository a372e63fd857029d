//! What the proxy consults per connection and per request, swapped atomically on
//! every snapshot so readers never take a lock and in-flight requests finish on the
//! tables they started with.
use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwap;

use crate::{
    policy::CompiledPolicy,
    snapshot::{DesiredState, ServiceEntry},
};

#[derive(Debug, Default)]
pub struct Tables {
    pub version: u64,
    pub services: HashMap<u32, ServiceEntry>,
    pub policy: CompiledPolicy,
}

#[derive(Debug, Default)]
pub struct ProxyTables {
    current: ArcSwap<Tables>,
}

impl ProxyTables {
    pub fn load(&self) -> Arc<Tables> {
        self.current.load_full()
    }

    pub fn replace(&self, state: &DesiredState, policy: CompiledPolicy) {
        self.current.store(Arc::new(Tables {
            version: state.version,
            services: state.service_table.clone(),
            policy,
        }));
    }
}
