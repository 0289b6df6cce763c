%% @doc Run-time configuration, read from the OS environment (never baked in at build time).
%%
%% HELLO_PORT (default 4000), HELLO_BIND (default 0.0.0.0), HELLO_DATA_DIR (default ./data),
%% HELLO_GREETING (default hello), HELLO_SECRET (never printed: only its sha256 and length).
-module(hello_erl_config).

-export([port/0, bind/0, data_dir/0, greeting/0, secret_digest/0, version/0, migrations/0]).

env(Name, Default) ->
    case os:getenv(Name) of
        false -> Default;
        "" -> Default;
        Value -> Value
    end.

port() -> list_to_integer(env("HELLO_PORT", "4000")).

bind() -> env("HELLO_BIND", "0.0.0.0").

data_dir() -> filename:absname(env("HELLO_DATA_DIR", "data")).

greeting() -> env("HELLO_GREETING", "hello").

%% {Sha256Hex, Bytes} of HELLO_SECRET, or undefined.
secret_digest() ->
    case os:getenv("HELLO_SECRET") of
        false -> undefined;
        Secret ->
            Bin = unicode:characters_to_binary(Secret),
            {string:lowercase(binary:encode_hex(crypto:hash(sha256, Bin))), byte_size(Bin)}
    end.

%% The application's vsn (the release version).
version() ->
    _ = application:load(hello_erl),
    {ok, Vsn} = application:get_key(hello_erl, vsn),
    Vsn.

%% How many migrations this build knows (numbered 1..N).
migrations() ->
    _ = application:load(hello_erl),
    {ok, N} = application:get_env(hello_erl, migrations),
    N.
