//! Databases for tests: each test gets a fresh PostgreSQL database of its own, dropped when
//! it ends (pass or fail).
//!
//! The server is `OPRUN_TEST_POSTGRES` (a libpq URL to a database the test may connect to
//! and create databases from), by default `postgres://root@127.0.0.1:5432/postgres`.

use std::str::FromStr;

use tokio_postgres::NoTls;

/// The server tests use.
pub fn server_url() -> String {
    std::env::var("OPRUN_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".to_owned())
}

/// A database made for one test; dropped with it.
pub struct TestDatabase {
    name: String,
    admin: String,
}

impl TestDatabase {
    /// Creates an empty database with a unique name.
    ///
    /// # Panics
    /// When the server cannot be reached: tests that need PostgreSQL fail loudly without it.
    pub async fn create(label: &str) -> Self {
        let admin = server_url();
        let name = format!(
            "oprun_test_{}_{}_{:08x}",
            label,
            std::process::id(),
            rand::random::<u32>()
        );
        let (client, connection) =
            tokio_postgres::connect(&admin, NoTls)
                .await
                .unwrap_or_else(|e| {
                    panic!("PostgreSQL is not reachable at {admin} (set OPRUN_TEST_POSTGRES): {e}")
                });
        let driver = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        drop(client);
        let _ = driver.await;
        Self { name, admin }
    }

    /// A URL for this database (the server's, with its database name replaced).
    pub fn url(&self) -> String {
        let config = tokio_postgres::Config::from_str(&self.admin).expect("a valid server URL");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("postgres");
        format!("postgres://{user}@{host}:{port}/{}", self.name)
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop may run inside a runtime: a thread of its own runs the last statement.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&admin, NoTls).await.ok()?;
                let driver = tokio::spawn(connection);
                let result = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
                drop(client);
                let _ = driver.await;
                result.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}
