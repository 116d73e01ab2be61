use otel_instrument::monitored;

#[monitored]
fn plain(x: u32) -> u32 {
    x + 1
}

#[monitored(name = "renamed")]
fn with_name() {}

#[monitored(kind = server)]
fn with_kind_ident() {}

#[monitored(kind = "client")]
fn with_kind_string() {}

#[monitored(level = debug)]
fn with_level_ident() {}

#[monitored(level = "trace")]
fn with_level_string() {}

#[monitored(skip(secret))]
fn with_skip(id: u32, secret: &str) -> usize {
    id as usize + secret.len()
}

#[monitored(skip_all)]
fn with_skip_all(_not_debug: std::sync::mpsc::Sender<()>) {}

#[monitored(fields(user.id = 7, route = "/x", dbg = ?vec![1], shown = %"y", r#type = 1, "a.b" = true, empty))]
fn with_fields() {}

#[monitored(err)]
fn with_err() -> Result<(), std::io::Error> {
    Ok(())
}

#[monitored(err = false)]
fn without_err() -> Result<(), String> {
    Err("counted as ok".into())
}

#[monitored(sample = 0.5)]
fn with_sample() {}

#[monitored(sample = 1)]
fn with_integer_sample() {}

#[monitored(slow = "250ms")]
fn with_slow() {}

#[monitored(slow = "1.5s", sample = 0.01)]
async fn with_slow_async() {}

#[monitored(metrics = false)]
fn without_metrics() {}

#[monitored(span = false)]
fn without_span() {}

#[monitored(crate = ::otel_instrument)]
fn with_crate_path() {}

#[monitored(name = "all", kind = consumer, level = "warn", skip(b), fields(k = 1), err, sample = 0.25, metrics = true, span = true, crate = otel_instrument)]
fn with_everything(a: u8, b: u8) -> Result<u8, std::num::ParseIntError> {
    let n: u8 = "7".parse()?;
    Ok(a + b + n)
}

fn main() {
    plain(1);
    with_name();
    with_kind_ident();
    with_kind_string();
    with_level_ident();
    with_level_string();
    with_skip(1, "s");
    with_skip_all(std::sync::mpsc::channel().0);
    with_fields();
    with_err().unwrap();
    let _ = without_err();
    with_sample();
    with_integer_sample();
    with_slow();
    let _ = with_slow_async();
    without_metrics();
    without_span();
    with_crate_path();
    with_everything(1, 2).unwrap();
}
