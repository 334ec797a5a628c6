"""The progress bar: a line per tenth crossed when stderr is not a terminal."""

import io

from itsacat.progress import Progress


class Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_a_line_each_time_a_tenth_is_crossed_and_at_the_end() -> None:
    out = Pipe()
    bar = Progress(100, stream=out)
    for done in (0, 3, 7, 12, 19, 23, 35, 36, 99, 100, 100):
        bar.update(done, cost=0.5)
    lines = out.getvalue().splitlines()
    assert [line.split("epoch ")[1].split()[0] for line in lines] == [
        "0/100",
        "12/100",
        "23/100",
        "35/100",
        "99/100",
        "100/100",
    ]
    assert "cost 0.500000" in lines[-1] and "[########################]" in lines[-1]
