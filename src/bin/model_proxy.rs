//! `sandstorm-model-proxy`: the model endpoint an E2B sandbox's template
//! carries, started as root beside each runner (see
//! [`sandstorm::model_proxy`]).

fn main() -> std::process::ExitCode {
    sandstorm::model_proxy::main()
}
