// examples/client.rs: oprun's Rust client: submit a typed task, print its progress as the
// server streams it, then read the typed result (`cargo run --example client` beside a
// running `oprun serve`; OPRUN_ADDR overrides the address).
use futures::StreamExt;
use oprun::client::{metadata, Client};
use oprun::kinds::sleep::Sleep;
use oprun::proto::oprun::v1::SleepInput;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("OPRUN_ADDR").unwrap_or_else(|_| "127.0.0.1:50051".into());
    // TLS and tokens: Client::builder("https://…").ca_certificate(pem).token(t).connect()
    let client = Client::connect(addr).await?;
    let input = SleepInput {
        duration: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        steps: 4,
        ..SleepInput::default()
    };
    let handle = client.submit::<Sleep>(input).await?;
    println!("submitted {}", handle.name());
    let mut progress = handle.progress(); // WatchOperation: no polling
    while let Some(op) = progress.next().await {
        if let Some(p) = metadata(&op?).and_then(|m| m.progress) {
            println!("{}/{}", p.completed, p.total);
        }
    }
    // The typed response, or ClientError::Failed { code, message, details }.
    let output = handle.result().await?;
    println!("{} steps done", output.steps_done);
    Ok(())
}
