"""Data for the demo model: CPython stdlib sources plus synthetic chat and tool-use samples.

Everything is generated on this machine, deterministically from a seed. Not part of the cactus
package: `tools/train_demo.py` and `tools/eval_demo.py` import it.
"""

from __future__ import annotations

import json
import random
import sysconfig
import zlib
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.sandbox

TOOLS_DIR = Path(__file__).resolve().parent
TEMPLATE_PATH = TOOLS_DIR / "lfm2_chat_template.jinja"
SPECIAL_TOKENS = json.loads((TOOLS_DIR / "lfm2_special_tokens.json").read_text())
BOS = "<|startoftext|>"
EOT = "<|endoftext|>"

# Directories of the stdlib that are tests, demos, bundled packages or generated codec tables.
_SKIP_DIRS = {"test", "tests", "idle_test", "idlelib", "lib2to3", "turtledemo", "tkinter",
              "ensurepip", "site-packages", "encodings", "__pycache__"}


# ---------------------------------------------------------------------------------- stdlib text

def stdlib_files() -> list[tuple[str, str]]:
    """(relative path, text) of the stdlib's *.py files, sorted, tests and tables left out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        dirs = rel.parts[:-1]
        if any(d in _SKIP_DIRS or d.startswith(("test", "config-")) for d in dirs):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            out.append((rel.as_posix(), text))
    return out


def is_heldout_file(rel: str) -> bool:
    """A fixed ~5% of files, chosen by a hash of the path so the split never depends on order."""
    return zlib.crc32(rel.encode()) % 20 == 0


# ---------------------------------------------------------------------------------- template

def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers overrides jinja's tojson the same way (no HTML escaping, keys kept in order).
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def load_template(path: Path = TEMPLATE_PATH) -> jinja2.Template:
    """The chat template compiled in the environment transformers' apply_chat_template uses."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    return env.from_string(path.read_text())


def render(template: jinja2.Template, messages: list[dict], tools: list | None = None,
           add_generation_prompt: bool = False) -> str:
    return template.render(messages=messages, tools=tools, bos_token=BOS,
                           add_generation_prompt=add_generation_prompt)


# ---------------------------------------------------------------------------------- code tasks
# (infinitive phrasings, third-person phrasings, code, example call or None). The example is
# executed at build time, so every "returns X" in an answer is what the code really returns.

CODE_TASKS = [
    (["sort a list", "sort a list of numbers", "sort a list in ascending order"],
     ["sorts a list", "sorts a list of numbers", "sorts a list in ascending order"],
     'def sort_list(items):\n    """Return a new list with the items in ascending order."""\n'
     "    return sorted(items)", "sort_list([3, 1, 2])"),
    (["reverse a string"], ["reverses a string"],
     "def reverse_string(s):\n    return s[::-1]", 'reverse_string("hello")'),
    (["sum a list of numbers", "compute the sum of a list", "add up all numbers in a list"],
     ["sums a list of numbers", "computes the sum of a list", "adds up all numbers in a list"],
     "def sum_list(numbers):\n    total = 0\n    for n in numbers:\n        total += n\n"
     "    return total", "sum_list([1, 2, 3, 4])"),
    (["compute the factorial of a number", "calculate a factorial"],
     ["computes the factorial of a number", "calculates a factorial"],
     "def factorial(n):\n    if n < 0:\n        raise ValueError(\"n must be non-negative\")\n"
     "    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result",
     "factorial(5)"),
    (["return the nth Fibonacci number", "compute Fibonacci numbers"],
     ["returns the nth Fibonacci number", "computes Fibonacci numbers"],
     "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
     "    return a", "fibonacci(10)"),
    (["check if a number is prime", "test whether a number is prime"],
     ["checks if a number is prime", "tests whether a number is prime"],
     "def is_prime(n):\n    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n"
     "        if n % i == 0:\n            return False\n        i += 1\n    return True",
     "is_prime(17)"),
    (["count the words in a string", "count words in a sentence"],
     ["counts the words in a string", "counts words in a sentence"],
     "def count_words(text):\n    return len(text.split())", 'count_words("the quick brown fox")'),
    (["check if a string is a palindrome"], ["checks if a string is a palindrome"],
     'def is_palindrome(s):\n    cleaned = "".join(c.lower() for c in s if c.isalnum())\n'
     "    return cleaned == cleaned[::-1]", 'is_palindrome("A man, a plan, a canal: Panama")'),
    (["find the largest number in a list", "find the maximum of a list"],
     ["finds the largest number in a list", "finds the maximum of a list"],
     "def find_max(numbers):\n    if not numbers:\n        raise ValueError(\"empty list\")\n"
     "    largest = numbers[0]\n    for n in numbers[1:]:\n        if n > largest:\n"
     "            largest = n\n    return largest", "find_max([4, 9, 2, 7])"),
    (["find the smallest number in a list", "find the minimum of a list"],
     ["finds the smallest number in a list", "finds the minimum of a list"],
     "def find_min(numbers):\n    if not numbers:\n        raise ValueError(\"empty list\")\n"
     "    smallest = numbers[0]\n    for n in numbers[1:]:\n        if n < smallest:\n"
     "            smallest = n\n    return smallest", "find_min([4, 9, 2, 7])"),
    (["compute the average of a list", "calculate the mean of a list of numbers"],
     ["computes the average of a list", "calculates the mean of a list of numbers"],
     "def average(numbers):\n    if not numbers:\n        raise ValueError(\"empty list\")\n"
     "    return sum(numbers) / len(numbers)", "average([2, 4, 6])"),
    (["count the vowels in a string"], ["counts the vowels in a string"],
     'def count_vowels(text):\n    return sum(1 for c in text.lower() if c in "aeiou")',
     'count_vowels("Hello World")'),
    (["remove duplicates from a list", "remove duplicate items from a list while keeping order"],
     ["removes duplicates from a list", "removes duplicate items from a list while keeping order"],
     "def remove_duplicates(items):\n    seen = set()\n    result = []\n    for item in items:\n"
     "        if item not in seen:\n            seen.add(item)\n            result.append(item)\n"
     "    return result", "remove_duplicates([1, 2, 2, 3, 1])"),
    (["compute the greatest common divisor of two numbers", "find the gcd of two integers"],
     ["computes the greatest common divisor of two numbers", "finds the gcd of two integers"],
     "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return abs(a)", "gcd(48, 18)"),
    (["compute the least common multiple of two numbers"],
     ["computes the least common multiple of two numbers"],
     "from math import gcd\n\n\ndef lcm(a, b):\n    if a == 0 or b == 0:\n        return 0\n"
     "    return abs(a * b) // gcd(a, b)", "lcm(4, 6)"),
    (["flatten a nested list"], ["flattens a nested list"],
     "def flatten(nested):\n    result = []\n    for item in nested:\n"
     "        if isinstance(item, list):\n            result.extend(flatten(item))\n"
     "        else:\n            result.append(item)\n    return result",
     "flatten([1, [2, [3, 4]], 5])"),
    (["do a binary search in a sorted list", "implement binary search"],
     ["does a binary search in a sorted list", "implements binary search"],
     "def binary_search(items, target):\n    lo, hi = 0, len(items) - 1\n    while lo <= hi:\n"
     "        mid = (lo + hi) // 2\n        if items[mid] == target:\n            return mid\n"
     "        if items[mid] < target:\n            lo = mid + 1\n        else:\n"
     "            hi = mid - 1\n    return -1", "binary_search([1, 3, 5, 7, 9], 7)"),
    (["convert Celsius to Fahrenheit"], ["converts Celsius to Fahrenheit"],
     "def celsius_to_fahrenheit(c):\n    return c * 9 / 5 + 32", "celsius_to_fahrenheit(100)"),
    (["convert Fahrenheit to Celsius"], ["converts Fahrenheit to Celsius"],
     "def fahrenheit_to_celsius(f):\n    return (f - 32) * 5 / 9", "fahrenheit_to_celsius(212)"),
    (["check if a number is even"], ["checks if a number is even"],
     "def is_even(n):\n    return n % 2 == 0", "is_even(7)"),
    (["count how often each character appears in a string"],
     ["counts how often each character appears in a string"],
     "def char_frequency(text):\n    counts = {}\n    for c in text:\n"
     "        counts[c] = counts.get(c, 0) + 1\n    return counts", 'char_frequency("abca")'),
    (["count the frequency of each word in a text"], ["counts the frequency of each word in a text"],
     "def word_frequency(text):\n    counts = {}\n    for word in text.lower().split():\n"
     "        counts[word] = counts.get(word, 0) + 1\n    return counts",
     'word_frequency("the cat and the hat")'),
    (["merge two sorted lists"], ["merges two sorted lists"],
     "def merge_sorted(a, b):\n    result = []\n    i = j = 0\n"
     "    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n"
     "            result.append(a[i])\n            i += 1\n        else:\n"
     "            result.append(b[j])\n            j += 1\n    result.extend(a[i:])\n"
     "    result.extend(b[j:])\n    return result", "merge_sorted([1, 4, 6], [2, 3, 7])"),
    (["implement bubble sort", "sort a list with bubble sort"],
     ["implements bubble sort", "sorts a list with bubble sort"],
     "def bubble_sort(items):\n    items = list(items)\n    n = len(items)\n    for i in range(n):\n"
     "        for j in range(n - 1 - i):\n            if items[j] > items[j + 1]:\n"
     "                items[j], items[j + 1] = items[j + 1], items[j]\n    return items",
     "bubble_sort([5, 2, 9, 1])"),
    (["capitalize every word in a string"], ["capitalizes every word in a string"],
     'def capitalize_words(text):\n    return " ".join(w.capitalize() for w in text.split())',
     'capitalize_words("hello big world")'),
    (["check if two strings are anagrams"], ["checks if two strings are anagrams"],
     "def is_anagram(a, b):\n    def normalize(s):\n"
     '        return sorted(s.replace(" ", "").lower())\n    return normalize(a) == normalize(b)',
     'is_anagram("listen", "silent")'),
    (["sum the digits of a number"], ["sums the digits of a number"],
     "def sum_digits(n):\n    return sum(int(d) for d in str(abs(n)))", "sum_digits(1234)"),
    (["check if a number is a power of two"], ["checks if a number is a power of two"],
     "def is_power_of_two(n):\n    return n > 0 and n & (n - 1) == 0", "is_power_of_two(64)"),
    (["read the lines of a text file", "read a file into a list of lines"],
     ["reads the lines of a text file", "reads a file into a list of lines"],
     'def read_lines(path):\n    with open(path, encoding="utf-8") as f:\n'
     '        return [line.rstrip("\\n") for line in f]', None),
    (["split a list into chunks of a given size"], ["splits a list into chunks of a given size"],
     "def chunk(items, size):\n    return [items[i:i + size] for i in range(0, len(items), size)]",
     "chunk([1, 2, 3, 4, 5], 2)"),
    (["square every number in a list"], ["squares every number in a list"],
     "def squares(numbers):\n    return [n * n for n in numbers]", "squares([1, 2, 3])"),
    (["filter the even numbers from a list", "keep only the even numbers of a list"],
     ["filters the even numbers from a list", "keeps only the even numbers of a list"],
     "def even_numbers(numbers):\n    return [n for n in numbers if n % 2 == 0]",
     "even_numbers([1, 2, 3, 4, 5, 6])"),
    (["find the second largest number in a list"], ["finds the second largest number in a list"],
     "def second_largest(numbers):\n    unique = sorted(set(numbers))\n    if len(unique) < 2:\n"
     '        raise ValueError("need at least two distinct numbers")\n    return unique[-2]',
     "second_largest([3, 8, 1, 8, 5])"),
    (["check if a year is a leap year"], ["checks if a year is a leap year"],
     "def is_leap_year(year):\n"
     "    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)", "is_leap_year(2024)"),
    (["reverse a list"], ["reverses a list"],
     "def reverse_list(items):\n    return items[::-1]", "reverse_list([1, 2, 3])"),
    (["check if a number is a perfect square"], ["checks if a number is a perfect square"],
     "import math\n\n\ndef is_perfect_square(n):\n    if n < 0:\n        return False\n"
     "    root = math.isqrt(n)\n    return root * root == n", "is_perfect_square(49)"),
    (["convert a number to binary", "convert an integer to a binary string"],
     ["converts a number to binary", "converts an integer to a binary string"],
     'def to_binary(n):\n    if n == 0:\n        return "0"\n    sign = "-" if n < 0 else ""\n'
     "    n = abs(n)\n    digits = []\n    while n:\n        digits.append(str(n % 2))\n"
     '        n //= 2\n    return sign + "".join(reversed(digits))', "to_binary(10)"),
    (["count how many times an item appears in a list"],
     ["counts how many times an item appears in a list"],
     "def count_occurrences(items, target):\n    return sum(1 for x in items if x == target)",
     "count_occurrences([1, 2, 1, 3, 1], 1)"),
]

_ASK_INF = ["Write a Python function to {}.", "Write a Python function to {}", "How do I {} in Python?",
            "Give me a Python function to {}.", "Please write Python code to {}.",
            "Show me how to {} in Python.", "write a python function to {}", "Python: {}",
            "Write a function to {}.", "Can you help me {} in Python?"]
_ASK_3RD = ["Write a function that {}.", "Can you write a Python function that {}?",
            "I need a function that {}.", "Implement a function in Python that {}.",
            "Create a Python function that {}."]


def _example_result(code: str, call: str) -> str:
    namespace: dict = {}
    exec(code, namespace)  # our own fixed snippets, run to state their true result
    return repr(eval(call, namespace))


def code_sample(rng: random.Random) -> list[dict]:
    infs, thirds, code, call = rng.choice(CODE_TASKS)
    if rng.random() < 0.65:
        ask = rng.choice(_ASK_INF).format(rng.choice(infs))
    else:
        ask = rng.choice(_ASK_3RD).format(rng.choice(thirds))
    block = f"```python\n{code}\n```"
    style = rng.random()
    if style < 0.35:
        answer = f"Here is a Python function that {thirds[0]}:\n\n{block}"
    elif style < 0.55:
        answer = block
    else:
        answer = f"Here is a Python function that {thirds[0]}:\n\n{block}"
        if call is not None:
            answer += f"\n\nFor example, `{call}` returns `{_example_result(code, call)}`."
    messages = [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}]
    if rng.random() < 0.2:
        messages.insert(0, {"role": "system", "content": "You are a helpful coding assistant."})
    return messages


# ---------------------------------------------------------------------------------- tools
# Each tool: name, description, parameters {name: (json type, description)}, required names.

TOOL_SPECS = {
    "run_code": ("Run Python code and return its output", {"code": ("string", "Python source")},
                 ["code"]),
    "get_weather": ("Get the current weather for a city",
                    {"city": ("string", "City name"),
                     "unit": ("string", "celsius or fahrenheit")}, ["city"]),
    "search": ("Search the web", {"query": ("string", "Search query"),
                                  "max_results": ("integer", "How many results")}, ["query"]),
    "calculate": ("Evaluate an arithmetic expression",
                  {"expression": ("string", "Expression to evaluate")}, ["expression"]),
    "send_email": ("Send an email", {"to": ("string", "Recipient address"),
                                     "subject": ("string", "Subject line"),
                                     "body": ("string", "Message body")}, ["to", "subject", "body"]),
    "set_timer": ("Start a countdown timer", {"minutes": ("integer", "Duration in minutes"),
                                              "label": ("string", "Timer name")}, ["minutes"]),
    "get_time": ("Get the current time in a timezone",
                 {"timezone": ("string", "IANA timezone name")}, ["timezone"]),
    "translate": ("Translate text into another language",
                  {"text": ("string", "Text to translate"),
                   "target_language": ("string", "Language to translate into")},
                  ["text", "target_language"]),
    "get_stock_price": ("Get the latest price of a stock",
                        {"symbol": ("string", "Ticker symbol")}, ["symbol"]),
}


def tool_schema(name: str, openai_style: bool = True) -> dict:
    desc, params, required = TOOL_SPECS[name]
    fn = {"name": name, "description": desc,
          "parameters": {"type": "object",
                         "properties": {k: {"type": t, "description": d}
                                        for k, (t, d) in params.items()},
                         "required": required}}
    return {"type": "function", "function": fn} if openai_style else fn


def format_call(name: str, args: dict) -> str:
    # json.dumps of a str or int is also a valid Python literal, with LFM2's double quotes.
    return f"{name}(" + ", ".join(f"{k}={json.dumps(v)}" for k, v in args.items()) + ")"


def tool_call_text(calls: list[tuple[str, dict]]) -> str:
    return "<|tool_call_start|>[" + ", ".join(format_call(n, a) for n, a in calls) + \
        "]<|tool_call_end|>"


# Value pools. The held-out tool requests draw the free-text slots from the *_HELD pools, values
# the training set never shows, so parsing them is not a matter of recall.
CITIES = ["Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "New York", "Sydney", "Cairo",
          "Toronto", "Mumbai", "Seoul", "Lisbon", "Vienna", "Oslo", "Dublin", "Boston", "Chicago",
          "Nairobi", "Lima", "Athens", "Prague", "Warsaw", "Stockholm", "Denver", "Austin"]
CITIES_HELD = ["Zurich", "Helsinki", "Montreal", "Bangkok", "Istanbul", "Seattle", "Munich"]
TOPICS = ["python decorators", "the history of Rome", "best hiking trails", "how vaccines work",
          "electric cars", "sourdough bread recipes", "black holes", "the stock market today",
          "learning to play guitar", "climate change", "machine learning basics", "rust vs go",
          "healthy breakfast ideas", "the tallest mountains", "how to fix a flat tire"]
TOPICS_HELD = ["ancient Egyptian pyramids", "jazz music history", "growing tomatoes at home",
               "quantum computing", "marathon training plans"]
NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
NAMES_HELD = ["mallory", "oscar", "peggy", "trent"]
SUBJECTS = [("Meeting", "The meeting is moved to 3pm."), ("Lunch", "Want to get lunch tomorrow?"),
            ("Report", "The report is attached."), ("Hello", "Just saying hi!"),
            ("Reminder", "Don't forget the deadline on Friday."), ("Thanks", "Thank you for your help.")]
SUBJECTS_HELD = [("Invoice", "Please pay the invoice by Monday."), ("Party", "Party at my place.")]
TIMEZONES = ["Europe/Paris", "America/New_York", "Asia/Tokyo", "Europe/London", "UTC",
             "Australia/Sydney", "America/Los_Angeles"]
TIMEZONES_HELD = ["Asia/Kolkata", "America/Chicago"]
LANGS = ["French", "Spanish", "German", "Italian", "Japanese", "Portuguese"]
LANGS_HELD = ["Dutch", "Korean"]
PHRASES = ["good morning", "where is the station", "thank you very much", "I love cats",
           "how are you", "the weather is nice today"]
PHRASES_HELD = ["see you next week", "the library opens at nine"]
SYMBOLS = ["AAPL", "MSFT", "GOOG", "AMZN", "TSLA", "NVDA"]
SYMBOLS_HELD = ["IBM", "INTC"]
LABELS = ["tea", "pasta", "break", "laundry", "workout"]
CODE_SNIPPETS = ["print(2 + 2)", "print(sum(range(10)))", "print('hello'.upper())",
                 "print(len('banana'))", "print(sorted([3, 1, 2]))", "print(10 ** 3)",
                 "print(max([4, 8, 1]))", "print(7 // 2, 7 % 2)"]
CODE_SNIPPETS_HELD = ["print(abs(-5))", "print(list(range(4)))", "print('a,b'.split(','))"]


def _run_print(code: str) -> str:
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(code, {})  # our own fixed snippets, run to report their true output
    return buf.getvalue().strip()


def _tool_request(rng: random.Random, name: str, held: bool):
    """One (user text, [(tool, args)], tool result or None, final answer or None)."""
    pick = (lambda a, b: rng.choice(b if held else a))
    if name == "get_weather":
        city = pick(CITIES, CITIES_HELD)
        if rng.random() < 0.5:
            unit = rng.choice(["celsius", "fahrenheit"])
            ask = rng.choice(["What's the weather in {c} in {u}?", "Weather for {c}, in {u} please.",
                              "How warm is it in {c}? Use {u}."]).format(c=city, u=unit)
            args = {"city": city, "unit": unit}
        else:
            unit = "celsius"
            ask = rng.choice(["What's the weather like in {c}?", "Is it raining in {c}?",
                              "weather in {c}", "Tell me the weather in {c}."]).format(c=city)
            args = {"city": city}
        temp = rng.randint(-5, 35) if unit == "celsius" else rng.randint(25, 95)
        cond = rng.choice(["sunny", "cloudy", "rainy", "windy"])
        result = json.dumps({"temperature": temp, "unit": unit, "condition": cond})
        final = f"It is {temp} degrees {unit} and {cond} in {city}."
        if rng.random() < 0.15 and not held:
            city2 = rng.choice([c for c in CITIES if c != city])
            return (f"What's the weather in {city} and in {city2}?",
                    [(name, {"city": city}), (name, {"city": city2})], None, None)
        return ask, [(name, args)], result, final
    if name == "search":
        topic = pick(TOPICS, TOPICS_HELD)
        if rng.random() < 0.4:
            n = rng.randint(2, 10)
            ask = rng.choice(["Find {n} results about {t}.", "Search for {t} and show {n} results.",
                              "Give me the top {n} search results for {t}."]).format(n=n, t=topic)
            args = {"query": topic, "max_results": n}
        else:
            ask = rng.choice(["Search the web for {t}.", "Look up {t}.", "Can you search {t}?",
                              "search {t}"]).format(t=topic)
            args = {"query": topic}
        result = json.dumps({"results": [f"An article about {topic}"]})
        return ask, [(name, args)], result, f"I found an article about {topic}."
    if name == "calculate":
        a, b = rng.randint(2, 999), rng.randint(2, 99)
        op = rng.choice(["+", "-", "*"])
        expr = f"{a} {op} {b}"
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        ask = rng.choice(["What is {e}?", "Calculate {e}.", "compute {e}",
                          "Can you work out {e} for me?"]).format(e=expr)
        return ask, [(name, {"expression": expr})], json.dumps({"result": value}), \
            f"{expr} = {value}."
    if name == "run_code":
        code = pick(CODE_SNIPPETS, CODE_SNIPPETS_HELD)
        ask = rng.choice(["Run this Python code: {c}", "Execute `{c}` and tell me the output.",
                          "What does {c} print? Run it."]).format(c=code)
        out = _run_print(code)
        return ask, [(name, {"code": code})], json.dumps({"output": out}), f"The output is {out}."
    if name == "send_email":
        who = pick(NAMES, NAMES_HELD)
        subject, body = pick(SUBJECTS, SUBJECTS_HELD)
        addr = f"{who}@example.com"
        ask = rng.choice(['Send an email to {a} with subject "{s}" saying: {b}',
                          'Email {a}, subject {s}, body: {b}',
                          'Please send {a} an email titled "{s}" that says "{b}"']
                         ).format(a=addr, s=subject, b=body)
        return ask, [(name, {"to": addr, "subject": subject, "body": body})], \
            json.dumps({"status": "sent"}), f"Your email to {addr} has been sent."
    if name == "set_timer":
        minutes = rng.choice([1, 2, 3, 5, 10, 15, 20, 25, 30, 45, 60])
        if rng.random() < 0.5:
            label = rng.choice(LABELS)
            ask = f"Set a {minutes} minute timer for {label}."
            args = {"minutes": minutes, "label": label}
        else:
            ask = rng.choice(["Set a timer for {m} minutes.", "Start a {m} minute timer.",
                              "timer {m} min"]).format(m=minutes)
            args = {"minutes": minutes}
        return ask, [(name, args)], json.dumps({"status": "started"}), \
            f"Your {minutes} minute timer has started."
    if name == "get_time":
        tz = pick(TIMEZONES, TIMEZONES_HELD)
        ask = rng.choice(["What time is it in {z}?", "Current time in {z}?",
                          "Tell me the time in the {z} timezone."]).format(z=tz)
        hh, mm = rng.randint(0, 23), rng.randint(0, 59)
        return ask, [(name, {"timezone": tz})], json.dumps({"time": f"{hh:02d}:{mm:02d}"}), \
            f"It is {hh:02d}:{mm:02d} in {tz}."
    if name == "translate":
        text, lang = pick(PHRASES, PHRASES_HELD), pick(LANGS, LANGS_HELD)
        ask = rng.choice(['Translate "{t}" into {l}.', "How do you say '{t}' in {l}?",
                          "translate {t} to {l}"]).format(t=text, l=lang)
        return ask, [(name, {"text": text, "target_language": lang})], None, None
    if name == "get_stock_price":
        sym = pick(SYMBOLS, SYMBOLS_HELD)
        ask = rng.choice(["What is the stock price of {s}?", "How much is {s} trading at?",
                          "Get me the latest {s} price."]).format(s=sym)
        price = round(rng.uniform(20, 900), 2)
        return ask, [(name, {"symbol": sym})], json.dumps({"price": price}), \
            f"{sym} is trading at {price}."
    raise KeyError(name)


def tool_sample(rng: random.Random, held: bool = False):
    """(messages, tools, expected calls) for one tool-use conversation; held=True stops at the
    user turn, leaving the calls as the answer to compare with."""
    name = rng.choice(sorted(TOOL_SPECS))
    others = [t for t in sorted(TOOL_SPECS) if t != name]
    listed = rng.sample(others, rng.randint(1, 3)) + [name]
    rng.shuffle(listed)
    openai_style = held or rng.random() < 0.75
    tools = [tool_schema(t, openai_style) for t in listed]
    ask, calls, result, final = _tool_request(rng, name, held)
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": "You are a helpful assistant."})
    messages.append({"role": "user", "content": ask})
    if held:
        return messages, tools, calls
    messages.append({"role": "assistant", "content": tool_call_text(calls)})
    if result is not None and rng.random() < 0.5:
        messages.append({"role": "tool", "content": result})
        messages.append({"role": "assistant", "content": final})
    return messages, tools, calls


_SMALL_TALK = [("Hello!", "Hello! How can I help you today?"),
               ("Hi", "Hi! What can I do for you?"),
               ("Thanks!", "You're welcome!"),
               ("Who are you?", "I am a small demo assistant. I can write short Python functions "
                                "and call tools."),
               ("What can you do?", "I can write small Python functions and call the tools "
                                    "you give me.")]


def chat_texts(n: int, seed: int, template: jinja2.Template) -> list[str]:
    """n rendered training conversations: ~45% code, ~50% tool use, ~5% small talk."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.45:
            out.append(render(template, code_sample(rng)))
        elif r < 0.95:
            messages, tools, _ = tool_sample(rng)
            out.append(render(template, messages, tools))
        else:
            ask, answer = rng.choice(_SMALL_TALK)
            out.append(render(template, [{"role": "user", "content": ask},
                                         {"role": "assistant", "content": answer}]))
    return out


def heldout_tool_requests(n: int, seed: int) -> list[tuple[list[dict], list[dict], list]]:
    """n distinct (messages, tools, expected calls) requests with held-out values, for the
    parse-rate eval."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        messages, tools, calls = tool_sample(rng, held=True)
        key = json.dumps([messages, tools])
        if key not in seen:
            seen.add(key)
            out.append((messages, tools, calls))
    return out


# Seeds and sizes shared by train_demo.py and eval_demo.py, so both see the same split.
CHAT_SEED = 1234
HELDOUT_TOOL_SEED = 98765
N_HELDOUT_TOOL = 100
