//! Protobuf command frames (`uvarint(len) || Command` repeated): the eager and lazy decoders
//! agree, and every decoded command re-encodes to bytes that decode to the same command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_proto::Encoding;

fuzz_target!(|data: &[u8]| {
    let all = Encoding::Protobuf.decode_commands(data);
    let lazy: Vec<_> = Encoding::Protobuf.iter_commands(data).collect();
    let lazy_error = lazy.iter().any(Result::is_err);
    match all {
        Ok(commands) => {
            assert!(
                !lazy_error,
                "iter_commands failed where decode_commands did not"
            );
            assert_eq!(commands.len(), lazy.len());
            let mut out = Vec::new();
            Encoding::Protobuf
                .encode_commands(&commands, &mut out)
                .expect("protobuf encoding into a Vec cannot fail");
            let again = Encoding::Protobuf
                .decode_commands(&out)
                .expect("re-encoded commands decode");
            assert_eq!(again, commands);
            for command in &commands {
                // JSON may refuse bytes fields that are not JSON; it must not panic.
                let _ = Encoding::Json.encode_command(command, &mut Vec::new());
            }
        }
        Err(_) => assert!(
            lazy_error,
            "decode_commands failed where iter_commands did not"
        ),
    }
});
