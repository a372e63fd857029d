//! What the proxy consults per connection, swapped atomically on every snapshot so
//! readers never take a lock.
use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwap;

use crate::snapshot::{DesiredState, ServiceEntry};

#[derive(Debug, Default)]
pub struct Tables {
    pub version: u64,
    pub services: HashMap<u32, ServiceEntry>,
}

#[derive(Debug, Default)]
pub struct ProxyTables {
    current: ArcSwap<Tables>,
}

impl ProxyTables {
    pub fn load(&self) -> Arc<Tables> {
        self.current.load_full()
    }

    pub fn replace(&self, state: &DesiredState) {
        self.current.store(Arc::new(Tables {
            version: state.version,
            services: state.service_table.clone(),
        }));
    }
}
