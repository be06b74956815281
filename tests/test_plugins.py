"""The plugin manager: built-ins as plugins, entry points, blocking, tracing, registries."""

from __future__ import annotations

import contextlib
import inspect
import logging
import sys
import textwrap
import types
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs
import pytest

from trio_grains import hookspecs
from trio_grains._config import PluginsConfig
from trio_grains._exceptions import ConfigError, GrainTypeError, PluginError
from trio_grains._placement import RandomPlacement
from trio_grains._plugins import load_plugins
from trio_grains._registry import ProviderContext, ProviderRegistry
from trio_grains.hookspecs import hookimpl

BUILTIN_PLACEMENT = "trio_grains.builtin.placement"
NO_ENTRY_POINTS = PluginsConfig(load_entry_points=False)
DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRIO_GRAINS_BLOCK_PLUGINS", raising=False)
    monkeypatch.delenv("TRIO_GRAINS_TRACE_HOOKS", raising=False)


def plugin(name: str, *impls: Callable[..., object]) -> object:
    """A plugin object named *name* whose hooks are the ``@hookimpl`` functions *impls*."""
    return types.SimpleNamespace(__name__=name, **{impl.__name__: impl for impl in impls})


def storage_plugin(name: str, provider: str, factory: Any = None) -> object:
    """A plugin object named *name* that registers storage provider *provider*."""

    @contextlib.asynccontextmanager
    async def default_factory(
        context: ProviderContext, options: Mapping[str, Any]
    ) -> AsyncIterator[object]:
        yield {"context": context, "options": options}

    class Plugin:
        __name__ = name

        @hookimpl
        def grains_register_storage(self, registry: ProviderRegistry[Any]) -> None:
            registry.register(provider, factory or default_factory)

    return Plugin()


# --- built-ins -------------------------------------------------------------------------


def test_builtins_register_through_the_hooks() -> None:
    plugins = load_plugins(NO_ENTRY_POINTS)
    assert plugins.names() == [
        BUILTIN_PLACEMENT,
        "trio_grains.builtin.memory",
        "trio_grains.builtin.sqlite",
        "trio_grains.builtin.memory_streams",
    ]
    assert plugins.streams.plugin_of("memory") == "trio_grains.builtin.memory_streams"
    assert plugins.storage.plugin_of("sqlite") == "trio_grains.builtin.sqlite"
    assert plugins.storage.plugin_of("memory") == "trio_grains.builtin.memory"
    assert plugins.reminders.plugin_of("memory") == "trio_grains.builtin.memory"
    assert plugins.placement.names() == [
        "activation-count",
        "hash-based",
        "prefer-local",
        "random",
        "silo-role",
    ]
    assert plugins.placement.plugin_of("random") == BUILTIN_PLACEMENT
    impls = plugins.manager.hook.grains_register_placement.get_hookimpls()
    assert [impl.plugin_name for impl in impls] == [BUILTIN_PLACEMENT]


def test_each_load_has_its_own_manager_and_registries() -> None:
    first = load_plugins(NO_ENTRY_POINTS)
    second = load_plugins(NO_ENTRY_POINTS, extra=[storage_plugin("acme", "acme")])
    assert first.manager is not second.manager
    assert "acme" not in first.storage
    assert "acme" in second.storage
    strategy = RandomPlacement()
    assert first.placement.director_for(strategy) is not second.placement.director_for(strategy)


def test_load_plugins_defaults_to_a_default_config() -> None:
    assert BUILTIN_PLACEMENT in load_plugins().names()


# --- registries ------------------------------------------------------------------------


async def test_extra_plugin_registers_a_storage_factory() -> None:
    plugins = load_plugins(NO_ENTRY_POINTS, extra=[storage_plugin("acme-storage", "acme")])
    assert plugins.storage.names() == ["acme", "memory", "sqlite"]
    assert plugins.storage.plugin_of("acme") == "acme-storage"
    assert "acme-storage" in plugins.names()

    factory = plugins.storage.get("acme")
    context = ProviderContext(
        name="default", silo_name="silo-1", cluster_id="dev", converter=cattrs.Converter()
    )
    async with factory(context, {"path": "x.db"}) as provider:
        assert provider == {"context": context, "options": {"path": "x.db"}}


def test_duplicate_name_names_both_plugins() -> None:
    with pytest.raises(PluginError) as info:
        load_plugins(
            NO_ENTRY_POINTS,
            extra=[storage_plugin("first-plugin", "ramdisk"), storage_plugin("acme", "ramdisk")],
        )
    assert str(info.value) == (
        "storage provider 'ramdisk' is registered by both 'first-plugin' and 'acme'; "
        "block one of them with TRIO_GRAINS_BLOCK_PLUGINS=acme"
    )


def test_unknown_name_lists_the_available_ones() -> None:
    plugins = load_plugins(
        NO_ENTRY_POINTS,
        extra=[storage_plugin("a", "redis"), storage_plugin("b", "ramdisk")],
    )
    with pytest.raises(PluginError) as info:
        plugins.storage.get("postgress")
    message = str(info.value)
    assert message.startswith("unknown storage provider 'postgress'; available: ")
    available = message.split("available: ")[1].split(".")[0].split(", ")
    assert {"memory", "ramdisk", "redis"} <= set(available)
    assert available == sorted(available)
    assert "pip install trio-grains-postgress" in message
    assert "or fix the name" in message

    with pytest.raises(PluginError, match="Did you mean 'redis'"):
        plugins.storage.get("rediss")
    with pytest.raises(PluginError, match=r"unknown stream provider 'nats'; available: memory\."):
        plugins.streams.get("nats")


def test_registration_outside_a_hook_is_recorded_as_unattributed() -> None:
    registry: ProviderRegistry[Any] = ProviderRegistry("storage provider")
    registry.register("memory", print)
    with registry.registering_for("acme"):
        registry.register("acme", print)
    assert registry.plugin_of("memory") == "(no plugin)"
    assert registry.plugin_of("acme") == "acme"
    assert "acme" in registry
    assert len(registry) == 2
    with pytest.raises(PluginError, match="unknown storage provider 'nope'"):
        registry.plugin_of("nope")


@pytest.mark.parametrize("name", ["", "has space", "slash/y", "ümlaut", 42])
def test_bad_provider_names_are_rejected(name: Any) -> None:
    registry: ProviderRegistry[Any] = ProviderRegistry("storage provider")
    with registry.registering_for("acme"), pytest.raises(PluginError, match=r"'acme'.*letters"):
        registry.register(name, print)
    assert registry.names() == []


def test_a_factory_must_be_callable() -> None:
    registry: ProviderRegistry[Any] = ProviderRegistry("storage provider")
    with pytest.raises(PluginError, match="not callable; register the factory itself"):
        registry.register("memory", object())


# --- entry points ----------------------------------------------------------------------

PLUGIN_SOURCE = """
import contextlib
from trio_grains.hookspecs import hookimpl

@contextlib.asynccontextmanager
async def open_kv(context, options):
    yield "kv"

@hookimpl
def grains_register_storage(registry):
    registry.register("acme-kv", open_kv)
"""


@attrs.define
class Site:
    """A directory on ``sys.path`` holding installed distributions made up by a test."""

    root: Path
    modules: list[str] = attrs.field(factory=list)

    def install(
        self, dist: str, entry_points: Mapping[str, str], modules: Mapping[str, str]
    ) -> None:
        info = self.root / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[trio_grains]\n{lines}")
        for module, source in modules.items():
            (self.root / f"{module}.py").write_text(textwrap.dedent(source))
            self.modules.append(module)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.syspath_prepend(str(tmp_path))
    made = Site(tmp_path)
    yield made
    for module in made.modules:
        sys.modules.pop(module, None)


@pytest.fixture
def acme(site: Site) -> Site:
    site.install(
        "acme-grains", {"acme": "acme_grains_plugin"}, {"acme_grains_plugin": PLUGIN_SOURCE}
    )
    return site


def test_entry_point_plugins_are_loaded(acme: Site) -> None:
    plugins = load_plugins(PluginsConfig())
    assert "acme" in plugins.names()
    assert plugins.storage.plugin_of("acme-kv") == "acme"
    distributions = plugins.manager.list_plugin_distributions()
    assert [dist.name for _, dist in distributions if dist.name == "acme-grains"] == ["acme-grains"]


def test_entry_points_can_be_skipped(acme: Site) -> None:
    plugins = load_plugins(PluginsConfig(load_entry_points=False))
    assert "acme" not in plugins.names()
    assert "acme-kv" not in plugins.storage


def test_block_with_the_environment_variable(acme: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIO_GRAINS_BLOCK_PLUGINS", " other , acme,")
    plugins = load_plugins(PluginsConfig())
    assert "acme" not in plugins.names()
    assert "acme-kv" not in plugins.storage
    assert set(plugins.blocked()) == {"acme", "other"}
    assert "acme_grains_plugin" not in sys.modules  # blocked before import


def test_block_with_the_config(acme: Site) -> None:
    plugins = load_plugins(PluginsConfig(block=("acme",)))
    assert "acme" not in plugins.names()
    assert "acme-kv" not in plugins.storage


def test_block_applies_to_extra_plugins() -> None:
    plugins = load_plugins(
        PluginsConfig(load_entry_points=False, block=("acme",)),
        extra=[storage_plugin("acme", "acme-kv")],
    )
    assert "acme-kv" not in plugins.storage
    assert "acme" not in plugins.names()


def test_blocked_duplicate_resolves_a_conflict(acme: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PluginError, match="TRIO_GRAINS_BLOCK_PLUGINS=mine"):
        load_plugins(PluginsConfig(), extra=[storage_plugin("mine", "acme-kv")])
    monkeypatch.setenv("TRIO_GRAINS_BLOCK_PLUGINS", "mine")
    plugins = load_plugins(PluginsConfig(), extra=[storage_plugin("mine", "acme-kv")])
    assert plugins.storage.plugin_of("acme-kv") == "acme"


def test_essential_builtins_cannot_be_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PluginError, match=rf"'{BUILTIN_PLACEMENT}' is essential.*plugins\.block"):
        load_plugins(PluginsConfig(block=(BUILTIN_PLACEMENT,)))
    monkeypatch.setenv("TRIO_GRAINS_BLOCK_PLUGINS", BUILTIN_PLACEMENT)
    with pytest.raises(PluginError, match=r"essential.*TRIO_GRAINS_BLOCK_PLUGINS"):
        load_plugins(PluginsConfig())


def test_broken_entry_point_names_distribution_and_fix(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    site.install(
        "broken-grains",
        {"broken": "broken_grains_plugin"},
        {"broken_grains_plugin": "import no_such_module_for_trio_grains_tests\n"},
    )
    with pytest.raises(PluginError) as info:
        load_plugins(PluginsConfig())
    message = str(info.value)
    assert "plugin 'broken'" in message
    assert "entry point 'broken = broken_grains_plugin' of broken-grains 1.0" in message
    assert "no_such_module_for_trio_grains_tests" in message
    assert "TRIO_GRAINS_BLOCK_PLUGINS=broken" in message
    assert isinstance(info.value.__cause__, ModuleNotFoundError)

    monkeypatch.setenv("TRIO_GRAINS_BLOCK_PLUGINS", "broken")
    assert "broken" not in load_plugins(PluginsConfig()).names()


def test_entry_point_with_bad_hook_arguments_is_invalid(site: Site) -> None:
    source = """
    from trio_grains.hookspecs import hookimpl

    @hookimpl
    def grains_register_storage(registry, silo):
        pass
    """
    site.install("odd-grains", {"odd": "odd_grains_plugin"}, {"odd_grains_plugin": source})
    with pytest.raises(PluginError, match=r"plugin 'odd' .*odd-grains 1\.0.* not a valid"):
        load_plugins(PluginsConfig())


# --- validation ------------------------------------------------------------------------


@hookimpl
def grains_register_storge(registry: Any) -> None:
    raise AssertionError("never called")


def test_unknown_hook_fails_check_pending() -> None:
    with pytest.raises(PluginError) as info:
        load_plugins(NO_ENTRY_POINTS, extra=[plugin("Misspelled", grains_register_storge)])
    message = str(info.value)
    assert "plugin 'Misspelled' implements 'grains_register_storge'" in message
    assert "did you mean 'grains_register_storage'" in message
    assert "optionalhook=True" in message


def test_optional_unknown_hook_is_allowed() -> None:
    @hookimpl(optionalhook=True)
    def grains_register_reminders(registry: Any) -> None:
        raise AssertionError("never called")

    future = plugin("Future", grains_register_reminders)
    assert "Future" in load_plugins(NO_ENTRY_POINTS, extra=[future]).names()


def test_hook_wrappers_are_rejected() -> None:
    @hookimpl(wrapper=True)
    def grains_register_storage(registry: Any) -> Iterator[None]:
        yield

    with pytest.raises(PluginError, match="'Wrapper' implements 'grains_register_storage' as a"):
        load_plugins(NO_ENTRY_POINTS, extra=[plugin("Wrapper", grains_register_storage)])


def test_a_hook_returning_a_value_is_an_error() -> None:
    @hookimpl
    def grains_register_storage() -> dict[str, object]:
        return {"memory": print}

    with pytest.raises(PluginError, match=r"'Returns' returned .* call the registry's register"):
        load_plugins(NO_ENTRY_POINTS, extra=[plugin("Returns", grains_register_storage)])


def test_a_failing_hook_is_wrapped_and_chained() -> None:
    @hookimpl
    def grains_register_streams(registry: Any) -> None:
        raise KeyError("servers")

    with pytest.raises(PluginError, match="'Fails' failed in grains_register_streams") as info:
        load_plugins(NO_ENTRY_POINTS, extra=[plugin("Fails", grains_register_streams)])
    assert isinstance(info.value.__cause__, KeyError)


def test_the_same_extra_plugin_is_registered_once() -> None:
    plugin = storage_plugin("acme", "acme-kv")
    plugins = load_plugins(NO_ENTRY_POINTS, extra=[plugin, plugin])
    assert plugins.names().count("acme") == 1


def test_a_plugin_class_instead_of_an_instance_is_an_error() -> None:
    class Plugin:
        @hookimpl
        def grains_register_storage(self, registry: Any) -> None:
            raise AssertionError("never called")

    with pytest.raises(PluginError, match=r"is a class; pass an instance \(.*Plugin\(\)\)"):
        load_plugins(NO_ENTRY_POINTS, extra=[Plugin])


def test_call_order_is_registration_order_with_tryfirst() -> None:
    calls: list[str] = []

    def recorder(name: str, *, tryfirst: bool = False, trylast: bool = False) -> object:
        @hookimpl(tryfirst=tryfirst, trylast=trylast)
        def grains_register_placement() -> None:
            calls.append(name)

        return plugin(name, grains_register_placement)

    load_plugins(
        NO_ENTRY_POINTS,
        extra=[
            recorder("last", trylast=True),
            recorder("a"),
            recorder("first", tryfirst=True),
            recorder("b"),
        ],
    )
    assert calls == ["first", "a", "b", "last"]


def test_placement_strategy_by_name() -> None:
    placement = load_plugins(NO_ENTRY_POINTS).placement
    assert placement.strategy_for_name("random") == RandomPlacement()
    with pytest.raises(ConfigError, match="'silo-role' needs parameters"):
        placement.strategy_for_name("silo-role")
    with pytest.raises(PluginError, match=r"unknown placement strategy 'randm'.*'random'"):
        placement.strategy_for_name("randm")


# --- converter and grain classes -------------------------------------------------------


@attrs.frozen
class Money:
    cents: int
    currency: str


@hookimpl
def _money_hooks(converter: cattrs.Converter) -> None:
    converter.register_unstructure_hook(Money, lambda m: f"{m.cents} {m.currency}")
    converter.register_structure_hook(Money, _structure_money)


def _structure_money(text: str, _type: object) -> Money:
    cents, currency = text.split()
    return Money(int(cents), currency)


MONEY_PLUGIN = types.SimpleNamespace(
    __name__="MoneyPlugin", grains_configure_converter=_money_hooks
)


def test_configure_converter_adds_hooks() -> None:
    plugins = load_plugins(NO_ENTRY_POINTS, extra=[MONEY_PLUGIN])
    converter = cattrs.Converter()
    assert converter.unstructure(Money(150, "EUR")) == {"cents": 150, "currency": "EUR"}
    plugins.configure_converter(converter)
    assert converter.unstructure(Money(150, "EUR")) == "150 EUR"
    assert converter.structure("150 EUR", Money) == Money(150, "EUR")
    assert converter.structure(converter.unstructure([Money(1, "USD")]), list[Money]) == [
        Money(1, "USD")
    ]


def test_later_plugins_override_converter_hooks() -> None:
    @hookimpl
    def grains_configure_converter(converter: cattrs.Converter) -> None:
        converter.register_unstructure_hook(Money, lambda m: m.cents)

    override = plugin("Override", grains_configure_converter)
    plugins = load_plugins(NO_ENTRY_POINTS, extra=[MONEY_PLUGIN, override])
    converter = cattrs.Converter()
    plugins.configure_converter(converter)
    assert converter.unstructure(Money(150, "EUR")) == 150


@attrs.define
class RecordingGrainRegistry:
    registered: list[tuple[str | None, type]] = attrs.field(factory=list)
    current: str | None = None

    @contextlib.contextmanager
    def registering_for(self, plugin_name: str) -> Iterator[None]:
        self.current = plugin_name
        yield
        self.current = None

    def register(self, cls: type) -> None:
        self.registered.append((self.current, cls))


class AuditGrain:
    pass


@hookimpl
def grains_register_grain_classes(registry: Any) -> None:
    registry.register(AuditGrain)


GRAIN_PLUGIN = plugin("GrainPlugin", grains_register_grain_classes)


def test_register_grain_classes_attributes_plugins() -> None:
    plugins = load_plugins(NO_ENTRY_POINTS, extra=[GRAIN_PLUGIN])
    registry = RecordingGrainRegistry()
    plugins.register_grain_classes(registry)  # type: ignore[arg-type]
    assert registry.registered == [("GrainPlugin", AuditGrain)]


def test_grain_class_errors_pass_through_unwrapped() -> None:
    class Rejecting:
        def register(self, cls: type) -> None:
            raise GrainTypeError(f"{cls.__name__} is not a grain")

    plugins = load_plugins(NO_ENTRY_POINTS, extra=[GRAIN_PLUGIN])
    with pytest.raises(GrainTypeError, match="AuditGrain is not a grain"):
        plugins.register_grain_classes(Rejecting())  # type: ignore[arg-type]


# --- tracing ---------------------------------------------------------------------------


def test_tracing_logs_hook_calls(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_grains.plugins")
    monkeypatch.setenv("TRIO_GRAINS_TRACE_HOOKS", "1")
    plugins = load_plugins(NO_ENTRY_POINTS, extra=[MONEY_PLUGIN])
    plugins.configure_converter(cattrs.Converter())
    records = [r for r in caplog.records if r.name == "trio_grains.plugins"]
    assert all(r.levelno == logging.DEBUG for r in records)
    text = "\n".join(r.getMessage() for r in records)
    assert "grains_register_placement" in text
    assert f"-> {BUILTIN_PLACEMENT}" in text
    assert "-> MoneyPlugin" in text
    assert "finish grains_register_placement" in text


@pytest.mark.parametrize("value", ["", "0"])
def test_tracing_is_off_by_default(
    value: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_grains.plugins")
    monkeypatch.setenv("TRIO_GRAINS_TRACE_HOOKS", value)
    load_plugins(NO_ENTRY_POINTS)
    assert [r for r in caplog.records if r.name == "trio_grains.plugins"] == []


# --- the hook reference ----------------------------------------------------------------


def _hookspecs() -> list[tuple[str, Callable[..., object]]]:
    return [
        (name, fn)
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, "trio_grains_spec")
    ]


def test_every_hookspec_is_documented() -> None:
    specs = _hookspecs()
    assert len(specs) == 9
    reference = (DOCS / "hooks.md").read_text()
    for name, fn in specs:
        assert fn.__doc__ is not None
        assert "Example::" in fn.__doc__, name
        assert f"### `{name}(" in reference, f"{name} has no section in docs/hooks.md"
        summary = fn.__doc__.strip().splitlines()[0]
        assert summary in reference, f"docs/hooks.md is out of date for {name}"
